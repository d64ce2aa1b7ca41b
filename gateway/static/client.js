// authgateway browser client: a dependency-free ES module around fetch.
//
// The access token lives in this module's memory only (never localStorage, sessionStorage or a
// readable cookie), so a script injected later cannot read it from storage. The refresh token is
// an HttpOnly cookie scoped to the auth prefix: JavaScript never sees it, and API calls never carry it.
//
//   import { createAuthClient } from '/auth/client.js';
//   const auth = createAuthClient();
//   await auth.login(email, password, { rememberMe: true });
//   const res = await auth.fetch('/api/whoami');           // Bearer added; on 401: one refresh, one retry
//   auth.addEventListener('logged-out', (e) => showLogin(e.detail.reason));
//   const ws = auth.websocket('wss://app.example.com/api/ws'); // a close with 1008 (revoked) logs out
//   auth.loginWith('corp');                                 // to the identity provider and back, logged in

const LOCK_NAME = 'authgateway-refresh';
const CHANNEL_NAME = 'authgateway';
// How long a tab that waited for another tab's refresh waits for that tab's broadcast token. The lock
// grant and the BroadcastChannel message travel separately, so the grant can arrive first.
const BROADCAST_WAIT_MS = 1000;

export class AuthError extends Error {
  constructor(status, code, description) {
    super(description || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

async function errorFrom(res) {
  let body = {};
  try { body = await res.json(); } catch (_) { /* not JSON */ }
  return new AuthError(res.status, body.error, body.error_description);
}

export function createAuthClient({ prefix = '/auth', fetchImpl } = {}) {
  const doFetch = fetchImpl || ((...args) => globalThis.fetch(...args));
  const events = new EventTarget();
  let accessToken = null;
  let generation = 0;        // bumps whenever the token changes, in this tab or from another
  let inFlight = null;       // the single refresh promise shared by concurrent callers in this tab
  let tokenWaiters = [];     // resolved whenever `generation` changes
  const channel = typeof BroadcastChannel === 'function' ? new BroadcastChannel(CHANNEL_NAME) : null;

  function emit(type, detail = {}) {
    events.dispatchEvent(new CustomEvent(type, { detail }));
  }

  function setToken(token, { broadcast = true } = {}) {
    accessToken = token;
    generation += 1;
    emit('token', { claims: claimsOf(token) });
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach((wake) => wake());
    if (broadcast && channel) channel.postMessage({ type: token ? 'token' : 'logged-out', token });
  }

  if (channel) {
    channel.onmessage = (msg) => {
      const data = msg.data || {};
      if (data.type === 'token' && data.token) {
        setToken(data.token, { broadcast: false });
        emit('refreshed', { source: 'other-tab' });
      } else if (data.type === 'logged-out') {
        setToken(null, { broadcast: false });
        emit('logged-out', { reason: data.reason || 'logged-out-elsewhere' });
      }
    };
  }

  async function post(path, body) {
    return doFetch(`${prefix}${path}`, {
      method: 'POST',
      credentials: 'include',
      headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  }

  function loggedOut(reason) {
    setToken(null, { broadcast: false });
    // A tab that simply had no session (first visit) must not log the other tabs out.
    if (channel && reason !== 'no-session') channel.postMessage({ type: 'logged-out', reason });
    emit('logged-out', { reason });
  }

  function generationChange(seenGeneration, ms) {
    if (generation !== seenGeneration) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      tokenWaiters.push(() => { clearTimeout(timer); resolve(); });
    });
  }

  async function refreshNow(seenGeneration, waitedForLock = false) {
    // Another tab may have refreshed while this one waited for the lock: its token arrives over
    // the BroadcastChannel and bumps `generation`, so there is nothing left to do. The holder posts
    // before it releases the lock, but the grant may still overtake the message: wait for it briefly.
    if (waitedForLock && channel) await generationChange(seenGeneration, BROADCAST_WAIT_MS);
    if (generation !== seenGeneration && accessToken) return accessToken;
    emit('refreshing');
    const res = await post('/refresh-token');
    if (res.ok) {
      const body = await res.json();
      setToken(body.access_token || null);
      emit('refreshed', { source: 'this-tab' });
      return accessToken;
    }
    const err = await errorFrom(res);
    if (res.status === 401 || res.status === 403) {
      loggedOut(err.code === 'refresh_token_reused' ? 'reused' : err.code === 'missing_refresh_token' ? 'no-session' : 'revoked');
    }
    throw err;
  }

  function refresh() {
    if (!inFlight) {
      const seen = generation;
      const locks = globalThis.navigator && navigator.locks && typeof navigator.locks.request === 'function'
        ? navigator.locks : null;
      // Try the lock without waiting first, so that only a refresh that had to queue behind another
      // tab's waits for that tab's broadcast.
      const locked = locks
        ? locks.request(LOCK_NAME, { ifAvailable: true }, (lock) => (lock
          ? refreshNow(seen)
          : locks.request(LOCK_NAME, () => refreshNow(seen, true))))
        : refreshNow(seen);
      inFlight = locked.finally(() => { inFlight = null; });
    }
    return inFlight;
  }

  function withBearer(init, token) {
    const headers = new Headers((init && init.headers) || {});
    if (token) headers.set('Authorization', `Bearer ${token}`);
    return { ...init, headers, credentials: (init && init.credentials) || 'same-origin' };
  }

  async function authFetch(input, init = {}) {
    const seen = generation;
    const res = await doFetch(input, withBearer(init, accessToken));
    if (res.status !== 401) return res;
    emit('unauthorized', { url: String(input), challenge: res.headers.get('WWW-Authenticate') || '' });
    // RFC 9470: the route needs a stronger login. A refresh keeps the session's amr, so it cannot help:
    // tell the page, which asks for the second factor (loginMfa after login, or loginWithPasskey).
    if (/error="insufficient_user_authentication"/.test(res.headers.get('WWW-Authenticate') || '')) {
      emit('step-up-required', { url: String(input && input.url ? input.url : input) });
      return res;
    }
    // Someone refreshed while this call was out: retry with that token instead of refreshing again.
    if (generation !== seen && accessToken) return doFetch(input, withBearer(init, accessToken));
    try {
      await refresh();
    } catch (err) {
      return res;
    }
    return doFetch(input, withBearer(init, accessToken));
  }

  async function login(email, password, { rememberMe = false } = {}) {
    const res = await post('/login', { email, password, remember_me: rememberMe });
    if (!res.ok) throw await errorFrom(res);
    const body = await res.json();
    // Second factor on: no session yet, only {mfa_required, mfa_token, methods}; call loginMfa() next.
    if (body.mfa_required) { emit('mfa-required', body); return body; }
    setToken(body.access_token || null);
    emit('logged-in');
    return body;
  }

  async function logout() {
    const res = await doFetch(`${prefix}/logout`, withBearer({ method: 'POST', credentials: 'include' }, accessToken));
    loggedOut('logout');
    return res.status === 204;
  }

  async function logoutAll() {
    const res = await authFetch(`${prefix}/logout-all`, { method: 'POST', credentials: 'include' });
    if (res.status !== 204) throw await errorFrom(res);
    loggedOut('logout');
    return true;
  }

  async function sessions() {
    const res = await authFetch(`${prefix}/sessions`, { credentials: 'include' });
    if (!res.ok) throw await errorFrom(res);
    return (await res.json()).sessions;
  }

  async function revokeSession(id) {
    const res = await authFetch(`${prefix}/sessions/${encodeURIComponent(id)}`, { method: 'DELETE', credentials: 'include' });
    if (res.status !== 204) throw await errorFrom(res);
    return true;
  }

  // The gateway closes a proxied WebSocket with 1008 when its session is revoked (an admin, logout
  // everywhere, a replayed refresh token): that session is over, so this client is logged out too.
  const WS_CLOSE_REVOKED = 1008;

  function websocket(url, protocols) {
    const ws = new WebSocket(url, protocols);
    ws.addEventListener('close', (e) => {
      if (e.code === WS_CLOSE_REVOKED && accessToken !== null) loggedOut('revoked');
    });
    return ws;
  }

  // -- token lifecycle for display (authorization, issue 11) ------------------------------------
  // Events: 'token' {claims} whenever the access token changes (claims null when logged out),
  // 'unauthorized' {url, challenge} on each 401 an API call gets, then the existing 'refreshing'
  // and 'refreshed' of the refresh (each rotates the refresh token). `claims` is the current
  // token's payload, read for display only: the gateway verifies it, this client never trusts it.
  function claimsOf(token) {
    if (!token) return null;
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const json = decodeURIComponent(Array.from(atob(part), (c) => `%${c.charCodeAt(0).toString(16).padStart(2, '0')}`).join(''));
      return JSON.parse(json);
    } catch (_) {
      return null;
    }
  }

  // -- self-service accounts (issue 12) --
  async function accountPost(path, body) {
    const res = await post(path, body);
    if (!res.ok) throw await errorFrom(res);
    return res.status;
  }

  // 202 whatever the address (the answer tells nothing); the mail carries the verification link.
  async function signup(email, password) {
    return accountPost('/signup', { email, password });
  }

  async function forgotPassword(email) {
    return accountPost('/password/forgot', { email });
  }

  // The token comes from the reset link (`?token=...`); every session of the user ends.
  async function resetPassword(token, password) {
    return accountPost('/password/reset', { token, password });
  }

  // Keeps this session, ends the others; a wrong current password throws AuthError (403 invalid_credentials).
  async function changePassword(currentPassword, password) {
    const res = await authFetch(`${prefix}/password/change`, {
      method: 'POST',
      credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ current_password: currentPassword, password }),
    });
    if (res.status !== 204) throw await errorFrom(res);
    return true;
  }

  // -- federated login (OpenID Connect) ---------------------------------------------------------
  // The provider's tokens never reach the page: the gateway finishes the login and sets its own
  // refresh cookie, so after the redirect back `refresh()` (or the first `fetch`) gets an access token.

  async function providers() {
    const res = await doFetch(`${prefix}/providers`, { credentials: 'same-origin' });
    if (!res.ok) throw await errorFrom(res);
    return (await res.json()).providers;
  }

  function loginWith(name, returnTo) {
    const back = returnTo === undefined ? `${globalThis.location.pathname}${globalThis.location.search}` : returnTo;
    globalThis.location.assign(`${prefix}/oidc/${encodeURIComponent(name)}/login?return_to=${encodeURIComponent(back)}`);
  }

  // -- second factors: TOTP, recovery codes, passkeys (WebAuthn) -------------------------------

  function b64urlToBuffer(text) {
    const base64 = text.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(text.length / 4) * 4, '=');
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return bytes.buffer;
  }

  function bufferToB64url(buffer) {
    let text = '';
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  async function authJson(path, method, body) {
    const init = { method, credentials: 'include' };
    if (body !== undefined) { init.headers = { 'Content-Type': 'application/json' }; init.body = JSON.stringify(body); }
    const res = await authFetch(`${prefix}${path}`, init);
    if (!res.ok) throw await errorFrom(res);
    return res.status === 204 ? null : res.json();
  }

  async function loggedIn(res) {
    if (!res.ok) throw await errorFrom(res);
    const body = await res.json();
    setToken(body.access_token || null);
    emit('logged-in');
    return body;
  }

  async function loginMfa(mfaToken, { code, recoveryCode } = {}) {
    const second = recoveryCode !== undefined ? { recovery_code: recoveryCode } : { code };
    return loggedIn(await post('/login/mfa', { mfa_token: mfaToken, ...second }));
  }

  function credentialJson(cred) {
    const r = cred.response;
    const response = { clientDataJSON: bufferToB64url(r.clientDataJSON) };
    if (r.attestationObject) {
      response.attestationObject = bufferToB64url(r.attestationObject);
      response.transports = typeof r.getTransports === 'function' ? r.getTransports() : [];
    } else {
      response.authenticatorData = bufferToB64url(r.authenticatorData);
      response.signature = bufferToB64url(r.signature);
      if (r.userHandle) response.userHandle = bufferToB64url(r.userHandle);
    }
    return {
      id: cred.id,
      rawId: bufferToB64url(cred.rawId),
      type: cred.type,
      response,
      authenticatorAttachment: cred.authenticatorAttachment || undefined,
      clientExtensionResults: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
  }

  async function registerPasskey({ name = '' } = {}) {
    const options = await authJson('/passkeys/register/options', 'POST', {});
    const publicKey = {
      ...options,
      challenge: b64urlToBuffer(options.challenge),
      user: { ...options.user, id: b64urlToBuffer(options.user.id) },
      excludeCredentials: (options.excludeCredentials || []).map((c) => ({ ...c, id: b64urlToBuffer(c.id) })),
    };
    const cred = await navigator.credentials.create({ publicKey });
    return authJson('/passkeys/register', 'POST', { credential: credentialJson(cred), name });
  }

  async function loginWithPasskey({ email, rememberMe = false, tamper } = {}) {
    const res = await post('/passkeys/login/options', email ? { email } : {});
    if (!res.ok) throw await errorFrom(res);
    const options = await res.json();
    const publicKey = {
      ...options,
      challenge: b64urlToBuffer(options.challenge),
      allowCredentials: (options.allowCredentials || []).map((c) => ({ ...c, id: b64urlToBuffer(c.id) })),
    };
    if (tamper) tamper(publicKey);  // tests only: change what the authenticator signs
    const cred = await navigator.credentials.get({ publicKey });
    return loggedIn(await post('/passkeys/login', { credential: credentialJson(cred), remember_me: rememberMe }));
  }

  const mfa = {
    status: () => authJson('/mfa', 'GET'),
    enrollTotp: () => authJson('/mfa/totp/enroll', 'POST', {}),
    confirmTotp: (code) => authJson('/mfa/totp/confirm', 'POST', { code }),
    disableTotp: (code) => authJson('/mfa/totp', 'DELETE', { code }),
    regenerateRecoveryCodes: (code) => authJson('/mfa/recovery-codes', 'POST', { code }),
    passkeys: async () => (await authJson('/passkeys', 'GET')).passkeys,
    deletePasskey: (id) => authJson(`/passkeys/${encodeURIComponent(id)}`, 'DELETE'),
  };

  return {
    loginMfa,
    registerPasskey,
    loginWithPasskey,
    mfa,
    fetch: authFetch,
    websocket,
    providers,
    loginWith,
    login,
    logout,
    logoutAll,
    sessions,
    revokeSession,
    refresh,
    signup,
    forgotPassword,
    resetPassword,
    changePassword,
    get authenticated() { return accessToken !== null; },
    get claims() { return claimsOf(accessToken); },
    addEventListener: events.addEventListener.bind(events),
    removeEventListener: events.removeEventListener.bind(events),
  };
}
