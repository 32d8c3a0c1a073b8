// A small OpenID Provider for oidcproxy's interoperability tests, built on
// panva's oidc-provider (an independent, certified implementation).
//
//   node op.mjs --client-id proxy --client-secret s3cret \
//               --redirect-uri http://127.0.0.1:8080/oidc/callback [--port 0]
//               [--backchannel-logout-uri http://127.0.0.1:8080/oidc/backchannel-logout]
//               [--rotate-refresh-tokens] [--step-up]
//
// Every setting can also come from the environment (OP_PORT, OP_CLIENT_ID,
// OP_CLIENT_SECRET, OP_REDIRECT_URIS (space-separated),
// OP_POST_LOGOUT_REDIRECT_URIS, OP_ACCESS_TOKEN_TTL, OP_ID_TOKEN_TTL,
// OP_SESSION_TTL, OP_REFRESH_TOKEN_TTL; TTLs in seconds;
// OP_BACKCHANNEL_LOGOUT_URI, OP_ROTATE_REFRESH_TOKENS=1, OP_STEP_UP=1); the command line
// wins. It listens on 127.0.0.1 only (port 0: any free port), and prints
// "PORT <n>" on stdout once it is listening. Its issuer is
// http://127.0.0.1:<n>. It needs no network access.
//
// With a back-channel logout URI the client is registered for OpenID Connect
// Back-Channel Logout with backchannel_logout_session_required (ID tokens
// and logout tokens carry "sid"); the OP POSTs a logout token there when an
// OP session of the client ends (end_session confirmed). With
// --rotate-refresh-tokens every refresh grant issues a new refresh token and
// the old one is spent (using it again revokes the grant: invalid_grant).
//
// With --step-up (for tests/integration/test_step_up.py) the OP knows two
// authentication context classes (acr_values_supported: silver gold):
//   silver  the login form (any password);
//   gold    the login form, then a second page asking for a one-time code
//           (always "123456"; the field is named "otp").
// A login whose request's acr_values name gold goes through both pages and
// gets acr "gold"; any other login gets "silver". An OP session at silver
// asked for gold must log in again (a custom check of the login prompt,
// "acr_too_low"); max_age forces a fresh login once the OP session's
// auth_time is older (oidc-provider's own check). Every ID token carries
// acr and auth_time (the client's default_acr_values is silver and it
// requires auth_time). A login asking for the scope "api" also gets a JWT
// access token (RFC 9068) for the resource urn:oidcproxy:test-api, with the
// sign-in's acr and auth_time (other access tokens stay opaque).
//
// For the tests to count what happened, it prints one line per event on
// stdout: "EVENT <name> <details...>", e.g.
//   EVENT grant.success refresh_token
//   EVENT grant.error refresh_token invalid_grant
//   EVENT backchannel.success <client_id> <account> <sid>
//   EVENT backchannel.error <client_id> <account> <sid> <message>
//   EVENT end_session.success
//   EVENT grant.revoked
//   EVENT authorization.request <acr_values> <max_age> <prompt>   (each request to /auth;
//       - for an absent parameter, spaces in one as _)
//   EVENT login.success <account> <acr>                           (with --step-up)
//   EVENT login.otp <account>                                     (the one-time code page shown)
//
// Fault-test hooks (only with --test-hooks; for tests/integration/test_faults_*):
//   GET /__test__/token-stall?seconds=N  every later token request waits N
//       seconds before the OP handles it (0: no wait); EVENT token.abandoned
//       when its client has gone by then (the OP cannot read its body)
//   GET /__test__/jwks-fail?on=1         GET /jwks answers 503 (on=0: normal)
//   login names user1 .. user999999 are accounts too (claims derived from
//       the name), for tests that log in many different users
//   EVENT token.request                  printed as each token request arrives
//   the OP keeps up to a million stored items (sessions, grants, tokens)
//       instead of the provider's default 1000, of which a few hundred logins
//       would evict the first ones' refresh tokens (invalid_grant)
//   GET /__test__/acr-downgrade?on=1     (with --step-up) every login answers
//       acr "silver" whatever was asked: no one-time code page, and an OP
//       session at silver is not asked to log in again for gold (on=0: normal)

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { interactionPolicy } from 'oidc-provider';
// For --test-hooks only: the provider's own memory adapter over a larger LRU.
import MemoryAdapter from 'oidc-provider/lib/adapters/memory_adapter.js';
import LRU from 'oidc-provider/lib/helpers/lru.js';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    'redirect-uri': { type: 'string', multiple: true },
    'post-logout-redirect-uri': { type: 'string', multiple: true },
    'access-token-ttl': { type: 'string' },
    'id-token-ttl': { type: 'string' },
    'session-ttl': { type: 'string' },
    'refresh-token-ttl': { type: 'string' },
    'backchannel-logout-uri': { type: 'string' },
    'rotate-refresh-tokens': { type: 'boolean' },
    'test-hooks': { type: 'boolean' },
    'step-up': { type: 'boolean' },
    'abort-description': { type: 'string' },
  },
});

const env = process.env;
const list = (text) => (text ? text.split(/\s+/).filter(Boolean) : []);
const seconds = (name, text, fallback) => {
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) {
    throw new Error(`${name} must be a positive whole number of seconds, not ${text}`);
  }
  return n;
};

const settings = {
  port: Number(args.port ?? env.OP_PORT ?? 0),
  clientId: args['client-id'] ?? env.OP_CLIENT_ID ?? 'oidcproxy',
  clientSecret: args['client-secret'] ?? env.OP_CLIENT_SECRET,
  redirectUris: args['redirect-uri'] ?? list(env.OP_REDIRECT_URIS),
  postLogoutRedirectUris: args['post-logout-redirect-uri']
    ?? list(env.OP_POST_LOGOUT_REDIRECT_URIS),
  accessTokenTtl: seconds('access-token-ttl', args['access-token-ttl'] ?? env.OP_ACCESS_TOKEN_TTL, 3600),
  idTokenTtl: seconds('id-token-ttl', args['id-token-ttl'] ?? env.OP_ID_TOKEN_TTL, 3600),
  sessionTtl: seconds('session-ttl', args['session-ttl'] ?? env.OP_SESSION_TTL, 3600),
  refreshTokenTtl: seconds('refresh-token-ttl', args['refresh-token-ttl'] ?? env.OP_REFRESH_TOKEN_TTL, 86400),
  backchannelLogoutUri: args['backchannel-logout-uri'] ?? (env.OP_BACKCHANNEL_LOGOUT_URI || undefined),
  rotateRefreshTokens: args['rotate-refresh-tokens'] ?? env.OP_ROTATE_REFRESH_TOKENS === '1',
  testHooks: args['test-hooks'] ?? false,
  stepUp: args['step-up'] ?? env.OP_STEP_UP === '1',
  abortDescription: args['abort-description'],
};
if (!settings.clientSecret || settings.redirectUris.length === 0) {
  console.error('op.mjs: --client-secret and at least one --redirect-uri are required');
  process.exit(2);
}

// The test users. The login form of devInteractions takes any password; the
// login name is the account id (any other name fails the login at the OP).
const ACCOUNTS = {
  alice: {
    email: 'alice@example.com',
    email_verified: true,
    name: 'Alice Liddell',
    preferred_username: 'alice',
    groups: ['admins', 'staff'],
  },
  bob: {
    email: 'bob@example.com',
    email_verified: false,
    name: 'Bob Builder',
    preferred_username: 'bob',
    groups: ['staff'],
  },
  // Claims with markup: the proxy's pages must show them as text.
  mallory: {
    email: 'mallory@example.com',
    email_verified: false,
    name: 'Mallory',
    preferred_username: '<img src=x onerror="document.title=\'pwned\'">mallory',
    groups: ['staff'],
  },
};

// With --test-hooks: many users (user1, user2, ...) for load and fault tests.
const generatedAccount = (sub) => (settings.testHooks && /^user[1-9][0-9]{0,5}$/.test(sub) ? {
  email: `${sub}@example.com`,
  email_verified: true,
  name: `Test ${sub}`,
  preferred_username: sub,
  groups: ['users'],
} : undefined);

// The fault-test hooks' state (see the top).
const faults = { tokenStallMs: 0, jwksFail: false, acrDowngrade: false };

// --step-up: the two levels, the one-time code of the higher one, and the
// logins waiting for their code (interaction uid -> account id).
const SILVER = 'silver';
const GOLD = 'gold';
const ONE_TIME_CODE = '123456';
const API_RESOURCE = 'urn:oidcproxy:test-api';
const awaitingCode = new Map();
const asksGold = (params) => String(params?.acr_values ?? '').split(' ').includes(GOLD);

// The login prompt's checks, and with --step-up one more: an OP session
// below gold asked for gold logs in again (unless this very interaction
// has just logged in, or the downgrade hook is on).
const policy = interactionPolicy.base();
if (settings.stepUp) {
  policy.get('login').checks.push(new interactionPolicy.Check(
    'acr_too_low', 'a higher authentication context class is required',
    (ctx) => asksGold(ctx.oidc.params) && ctx.oidc.session.acr !== GOLD
      && !ctx.oidc.result?.login && !faults.acrDowngrade,
  ));
}

// A fresh signing key per process: the proxy must fetch it from jwks_uri.
const signingKey = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: `test-${randomBytes(4).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

// Listen first: the issuer names the port, and port 0 picks it.
const server = createServer();
server.listen(settings.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;

  const provider = new Provider(issuer, {
    // The one confidential client: the proxy.
    clients: [{
      client_id: settings.clientId,
      client_secret: settings.clientSecret,
      redirect_uris: settings.redirectUris,
      post_logout_redirect_uris: settings.postLogoutRedirectUris,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
      // --step-up: acr (silver unless gold was asked) and auth_time in
      // every ID token, also of logins that asked for neither.
      ...(settings.stepUp ? { default_acr_values: [SILVER], require_auth_time: true } : {}),
      ...(settings.backchannelLogoutUri ? {
        backchannel_logout_uri: settings.backchannelLogoutUri,
        backchannel_logout_session_required: true,
      } : {}),
    }],
    // Users come from ACCOUNTS; claims() answers for the ID token and
    // userinfo alike (the provider filters them by the granted scopes).
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub] ?? generatedAccount(sub);
      if (!account) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { sub, ...account };
        },
      };
    },
    // Scope -> claims. "groups" is a custom scope with a custom claim.
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups',
      ...(settings.stepUp ? ['api'] : [])],
    // Put the scope-requested claims into the ID token too, not only into
    // the userinfo answer (the proxy reads its identity from the ID token).
    conformIdTokenClaims: false,
    // --step-up: the two levels (acr_values_supported) and the login
    // prompt's extra check (see policy above).
    ...(settings.stepUp ? { acrValues: [SILVER, GOLD] } : {}),
    // --step-up: access tokens are JWTs (RFC 9068) for the resource
    // API_RESOURCE, with the sign-in's acr and auth_time, so that a test
    // can present one as a bearer token.
    ...(settings.stepUp ? {
      extraTokenClaims: (ctx, token) => {
        const source = ctx?.oidc?.entities?.AuthorizationCode ?? ctx?.oidc?.entities?.RefreshToken;
        return token.kind === 'AccessToken' && source
          ? { acr: source.acr, auth_time: source.authTime } : undefined;
      },
    } : {}),
    interactions: { policy },
    // PKCE on every authorization request (oidc-provider 9 knows S256 only).
    pkce: { required: () => true },
    // A refresh token whenever the client may use the grant, without
    // demanding the offline_access scope (for the proxy's refresh tests).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // The default rotates a confidential client's refresh token only near
    // its expiry; --rotate-refresh-tokens rotates on every refresh grant.
    ...(settings.rotateRefreshTokens ? { rotateRefreshToken: true } : {}),
    features: {
      // The built-in development login and consent pages: any password.
      devInteractions: { enabled: true },
      // RP-initiated logout (end_session_endpoint); on by default, stated.
      rpInitiatedLogout: { enabled: true },
      // Back-Channel Logout 1.0: used by a client registered with
      // --backchannel-logout-uri; advertised either way.
      backchannelLogout: { enabled: true },
      ...(settings.stepUp ? {
        resourceIndicators: {
          enabled: true,
          defaultResource: () => API_RESOURCE,
          useGrantedResource: () => true,
          getResourceServerInfo: () => ({
            scope: 'api', audience: API_RESOURCE, accessTokenFormat: 'jwt',
            accessTokenTTL: settings.accessTokenTtl,
          }),
        },
      } : {}),
    },
    // Lifetimes in seconds; tests of the proxy's refresh set short ones.
    // (RFC 9207's "iss" in authorization responses is on by default.)
    ttl: {
      AccessToken: settings.accessTokenTtl,
      IdToken: settings.idTokenTtl,
      Session: settings.sessionTtl,
      Grant: settings.sessionTtl,
      RefreshToken: settings.refreshTokenTtl,
    },
    // The OP's own outgoing requests (back-channel logout tokens) go to the
    // proxy on 127.0.0.1. oidc-provider refuses special-use addresses such
    // as loopback (SSRF protection, a dispatcher it passes to fetch); this
    // OP lives on loopback only, so its requests go without that dispatcher.
    fetch: (url, { dispatcher, ...options }) => globalThis.fetch(url, options),
    // --test-hooks: many logins (load and soak tests) without evictions.
    ...(settings.testHooks ? {
      adapter: ((store) => (model) => new MemoryAdapter(model, store))(
        new LRU({ maxSize: 1_000_000 })),
    } : {}),
    // Signs the OP's own cookies (session, interaction); fresh per process.
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    // Signs the ID tokens (RS256), published at jwks_uri.
    jwks: { keys: [signingKey] },
  });

  // The development pages @import a web font; forbid the browser to load
  // styles, fonts or images from elsewhere, so the tests make no outside
  // requests. (Scripts stay allowed: some pages submit a form by script.)
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.response.is('html') && !ctx.response.get('content-security-policy')) {
      ctx.set('content-security-policy', "style-src 'self' 'unsafe-inline'; font-src 'self'; img-src 'self' data:");
    }
  });

  // --abort-description: the error_description of a cancelled login, in
  // place of the provider's own (the proxy must show a hostile one as text).
  if (settings.abortDescription !== undefined) {
    provider.use(async (ctx, next) => {
      await next();
      const location = ctx.response.get('location');
      if (location && location.includes('error=access_denied')) {
        const url = new URL(location);
        url.searchParams.set('error_description', settings.abortDescription);
        ctx.set('location', url.href);
      }
    });
  }

  // The OP's errors on stderr, which a failing test shows.
  provider.on('server_error', (ctx, err) => console.error('server_error', err));
  provider.on('authorization.error', (ctx, err) => console.error('authorization.error', err.message, err.error_description ?? ''));
  provider.on('grant.error', (ctx, err) => console.error('grant.error', err.message, err.error_description ?? ''));

  // One line per event on stdout, for the tests to count (see the top).
  const word = (value) => String(value ?? '-').replace(/\s+/g, '_') || '-';
  const event = (...words) => process.stdout.write(`EVENT ${words.map(word).join(' ')}\n`);
  provider.on('grant.success', (ctx) => event('grant.success', ctx.oidc.params?.grant_type));
  provider.on('grant.error', (ctx, err) => event('grant.error', ctx.oidc?.params?.grant_type, err.error ?? err.message));
  provider.on('grant.revoked', () => event('grant.revoked'));
  provider.on('end_session.success', () => event('end_session.success'));
  provider.on('backchannel.success', (ctx, client, accountId, sid) => event('backchannel.success', client.clientId, accountId, sid));
  provider.on('backchannel.error', (ctx, err, client, accountId, sid) => event('backchannel.error', client.clientId, accountId, sid,
    err.cause ? `${err.message}: ${err.cause.message ?? err.cause}` : err.message));

  // --step-up: the login form's answer and the one-time code page, in
  // front of the development interactions (which know neither levels nor
  // codes). A submission of any other prompt (consent) goes on to them.
  const readForm = (req) => new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(new URLSearchParams(Buffer.concat(chunks).toString('utf8'))));
    req.on('error', reject);
  });
  const codePage = (res, uid, status, message) => {
    res.writeHead(status, {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'no-store',
      // No form-action: it would also bind the redirects after the form
      // (back to the client's redirect_uri, another origin).
      'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
    }).end(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Second step</title></head>
<body><h1>Second step</h1>
<p id="message">${message}</p>
<form autocomplete="off" action="/interaction/${encodeURIComponent(uid)}/otp" method="post">
  <input type="hidden" name="prompt" value="otp"/>
  <input required type="text" name="otp" inputmode="numeric" placeholder="one-time code" autofocus>
  <button type="submit">Confirm</button>
</form></body></html>
`);
  };
  const finishLogin = async (req, res, accountId, acr, amr) => {
    await provider.interactionFinished(req, res, { login: { accountId, acr, amr } },
      { mergeWithLastSubmission: false });
    event('login.success', accountId, acr);
  };
  const stepUpInteraction = async (req, res, uid, otp) => {
    let details;
    try {
      details = await provider.interactionDetails(req, res);
    } catch {
      return handler(req, res);  // no interaction here: the provider says so
    }
    if (details.uid !== uid) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('not this interaction\n');
      return undefined;
    }
    if (!otp) {
      if (details.prompt.name !== 'login') return handler(req, res);
      const accountId = (await readForm(req)).get('login');
      if (asksGold(details.params) && !faults.acrDowngrade) {
        awaitingCode.set(uid, accountId);
        event('login.otp', accountId);
        codePage(res, uid, 200, 'Enter the one-time code.');
        return undefined;
      }
      return finishLogin(req, res, accountId, SILVER, ['pwd']);
    }
    const accountId = awaitingCode.get(uid);
    if (accountId === undefined) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('no login awaits a one-time code here\n');
      return undefined;
    }
    if ((await readForm(req)).get('otp') !== ONE_TIME_CODE) {
      codePage(res, uid, 200, 'Wrong code, try again.');
      return undefined;
    }
    awaitingCode.delete(uid);
    return finishLogin(req, res, accountId, GOLD, ['pwd', 'otp']);
  };

  // The fault-test hooks (see the top): a control endpoint outside the
  // provider, and a stall or a failure in front of its token and JWKS
  // endpoints.
  const handler = provider.callback();
  const control = (req, res) => {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/__test__/token-stall') {
      faults.tokenStallMs = Math.round(Number(url.searchParams.get('seconds') ?? 0) * 1000);
    } else if (url.pathname === '/__test__/jwks-fail') {
      faults.jwksFail = url.searchParams.get('on') === '1';
    } else if (url.pathname === '/__test__/acr-downgrade' && settings.stepUp) {
      faults.acrDowngrade = url.searchParams.get('on') === '1';
    } else {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(faults));
  };
  server.on('request', (req, res) => {
    const path = req.url.split('?')[0];
    if (path === '/auth') {
      const query = new URL(req.url, issuer).searchParams;
      event('authorization.request', query.get('acr_values'), query.get('max_age'), query.get('prompt'));
    }
    const interaction = settings.stepUp && req.method === 'POST'
      && /^\/interaction\/([^/]+)(\/otp)?$/.exec(path);
    if (interaction) {
      return stepUpInteraction(req, res, interaction[1], Boolean(interaction[2])).catch((err) => {
        console.error('step-up interaction', err);
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' }).end('error\n');
      });
    }
    if (!settings.testHooks) return handler(req, res);
    if (path.startsWith('/__test__/')) return control(req, res);
    if (path === '/jwks' && faults.jwksFail) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('jwks failing (test hook)\n');
      return undefined;
    }
    if (path === '/token' && req.method === 'POST') {
      event('token.request');
      if (faults.tokenStallMs > 0) {
        setTimeout(() => {
          if (req.socket.destroyed) event('token.abandoned');
          handler(req, res);
        }, faults.tokenStallMs);
        return undefined;
      }
    }
    return handler(req, res);
  });
  process.stdout.write(`PORT ${port}\n`);
});

// The test harness stops the OP with SIGTERM.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  });
}
