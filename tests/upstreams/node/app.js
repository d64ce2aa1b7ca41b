// Express (with `trust proxy` for the loopback gateway) and a `ws` WebSocket server: what
// req.get(), req.protocol, req.hostname and req.ip report; GET /_seen lists the targets it was sent.
// Run: node app.js PORT
'use strict';
const crypto = require('crypto');
const http = require('http');
const express = require('express');
const { WebSocketServer } = require('ws');

const PATTERN = Buffer.from('0123456789abcdef'.repeat(4096));
const app = express();
app.set('trust proxy', 'loopback');
const seen = []; // every request target sent to this server, for GET /_seen (asked directly, never via the gateway)
app.use((req, res, next) => {
  if (req.path !== '/_seen') seen.push(req.originalUrl);
  res.set('X-Upstream', 'express');
  next();
});

const decoded = (v) => (v === undefined ? null : decodeURIComponent(v));

app.get('/_seen', (req, res) => res.json(seen));

// Express routes without case by default (`case sensitive routing` off): this also answers
// /ADMIN/whoami, the matrix's case rows show that the gateway never lets such a spelling through.
app.get('/admin/whoami', (req, res) => res.json({ route: 'admin', path: req.path, user_id: req.get('x-user-id') ?? null }));

app.get('/:prefix/whoami', (req, res) => {
  res.json({
    user_id: req.get('x-user-id') ?? null,
    email: decoded(req.get('x-user-email')),
    session_id: req.get('x-session-id') ?? null,
    scheme: req.protocol,
    secure: req.secure,
    host: req.get('host'),
    hostname: req.hostname,
    remote_addr: req.ip,
    script_root: req.baseUrl,
    headers: req.headers,
  });
});

app.post('/:prefix/upload', (req, res) => {
  const digest = crypto.createHash('sha256');
  let length = 0;
  req.on('data', (chunk) => { digest.update(chunk); length += chunk.length; });
  req.on('end', () => res.json({ length, sha256: digest.digest('hex') }));
});

app.get('/:prefix/download', (req, res) => {
  let left = parseInt(req.query.bytes, 10);
  res.set({ 'Content-Type': 'application/octet-stream', 'Content-Length': String(left) });
  const pump = () => {
    while (left > 0) {
      const piece = PATTERN.subarray(0, Math.min(left, PATTERN.length));
      left -= piece.length;
      if (!res.write(piece)) { res.once('drain', pump); return; }
    }
    res.end();
  };
  pump();
});

app.get('/:prefix/status/:code', (req, res) => {
  const code = parseInt(req.params.code, 10);
  res.status(code).json({ upstream_error: code });
});

app.get('/:prefix/crash', () => { throw new Error('crash on purpose'); });

const server = http.createServer(app);
const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (!req.url.endsWith('/ws')) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('message', (data, isBinary) => {
      if (!isBinary && data.toString() === 'whoami') {
        ws.send(JSON.stringify({ user_id: req.headers['x-user-id'] ?? null, email: decoded(req.headers['x-user-email']) }));
      } else {
        ws.send(data, { binary: isBinary });
      }
    });
  });
});
server.listen(parseInt(process.argv[2], 10), '127.0.0.1');
