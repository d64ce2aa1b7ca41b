// Koa with @koa/router, which routes without case by default (`sensitive: false`), like Express:
// its /admin/whoami also answers /ADMIN/whoami. For the matrix's case rows only. Run: node koa_app.js PORT
'use strict';
const Koa = require('koa');
const Router = require('@koa/router');

const app = new Koa();
app.proxy = true; // believe X-Forwarded-* from the gateway, as Express's `trust proxy` does
const router = new Router();
const seen = []; // every request target sent to this server, for GET /_seen (asked directly, never via the gateway)

app.use(async (ctx, next) => {
  if (ctx.path !== '/_seen') seen.push(ctx.url);
  ctx.set('X-Upstream', 'koa');
  await next();
});

const decoded = (v) => (v === undefined || v === '' ? null : decodeURIComponent(v));
const whoami = (ctx, route) => ({
  route,
  path: ctx.path,
  user_id: ctx.get('x-user-id') || null,
  email: decoded(ctx.get('x-user-email')),
  session_id: ctx.get('x-session-id') || null,
  scheme: ctx.protocol,
  host: ctx.get('host'),
  remote_addr: ctx.ip,
});

router.get('/_seen', (ctx) => { ctx.body = seen; });
router.get('/admin/whoami', (ctx) => { ctx.body = whoami(ctx, 'admin'); });
router.get('/:prefix/whoami', (ctx) => { ctx.body = whoami(ctx, 'any'); });

app.use(router.routes()).use(router.allowedMethods());
app.listen(parseInt(process.argv[2], 10), '127.0.0.1');
