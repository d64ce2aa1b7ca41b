// A real OpenID provider (panva's oidc-provider) for the federation tests, on loopback only.
//
// Usage: node provider.mjs '<json>' where the JSON is
//   { "port": N, "issuer"?: URL, "clients": [ {client metadata} ], "accounts": { "<login>": {claims} } }
// (`issuer` defaults to http://127.0.0.1:N; a test sets another to put a proxy of its own in front.)
// It prints one line `listening <port> as <issuer>` on stdout once it serves.
// Accounts: a login listed in `accounts` gets those claims; any other login that contains "@"
// is an account with that address, verified. The dev login form accepts any password.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const options = JSON.parse(process.argv[2] || '{}');
const accounts = options.accounts || {};
const { port } = options;
const issuer = options.issuer || `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') };

function claimsFor(login) {
  if (Object.hasOwn(accounts, login)) return { ...accounts[login] };
  if (login.includes('@')) return { email: login, email_verified: true };
  return undefined;
}

const configuration = {
  clients: options.clients || [],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // The gateway reads the user's claims from the id_token; without this the provider puts them only at userinfo.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    backchannelLogout: { enabled: true },
  },
  pkce: { required: () => true },
  // Consent is not what these tests exercise: the gateway is a first-party client, so a grant for
  // what it asks is made on the spot (the provider's documented loadExistingGrant hook).
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
    grant.addOIDCClaims(['email', 'email_verified', 'name', 'groups']);
    await grant.save();
    return grant;
  },
  async findAccount(ctx, sub) {
    const claims = claimsFor(sub);
    if (!claims) return undefined;
    return { accountId: sub, async claims() { return { sub, ...claims }; } };
  },
  // Back-channel logout POSTs go to the test gateway on 127.0.0.1, which the default fetch refuses as a
  // special-use address (its SSRF guard); this provider only ever runs on loopback inside the tests.
  fetch(url, init) {
    const { dispatcher, ...rest } = init;
    return globalThis.fetch(url, rest);
  },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, IdToken: 600, AccessToken: 600, AuthorizationCode: 60 },
};

const provider = new Provider(issuer, configuration);
provider.on('backchannel.error', (ctx, err) => { process.stderr.write(`backchannel.error ${err}\n`); });
const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening ${port} as ${issuer}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
