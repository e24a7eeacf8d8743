// Access to a room: where the coordinator serves things, the join token or
// invite of the URL fragment, and the token and invite requests. No DOM.

/** Where the coordinator serves things (same origin as this page). */
export const endpoints = {
  ws: (room) => `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/${encodeURIComponent(room)}`,
  token: '/token',
  redeem: '/api/v1/invites/redeem',
  invites: '/api/v1/invites',
  sfu: '/sfu',
};

/**
 * What the URL fragment carries: `{token}` (`#token=…`), `{invite}`
 * (`#invite=…`), or `{room}` (any other `#room-name`). A token or invite is
 * removed from the address bar (history.replaceState) as soon as it is read,
 * so it is not left in the history, bookmarks or a copied URL.
 */
export function takeFragment() {
  const hash = location.hash.slice(1);
  if (!hash) return {};
  const fields = new URLSearchParams(hash);
  const token = fields.get('token');
  const invite = fields.get('invite');
  if (token === null && invite === null) return { room: decodeURIComponent(hash) };
  history.replaceState(history.state, '', `${location.pathname}${location.search}`);
  return token !== null ? { token } : { invite };
}

/** The claims of a JWT (not verified: only the server can; used to show the room and name). */
export function jwtClaims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const text = new TextDecoder().decode(Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, '=')), (c) => c.charCodeAt(0)));
    const claims = JSON.parse(text);
    return claims && typeof claims === 'object' ? claims : null;
  } catch {
    return null;
  }
}

/** Error text of a JSON error reply (`{error, message}`). */
export async function replyError(res, what) {
  let detail = `HTTP ${res.status}`;
  try {
    const json = await res.json();
    if (typeof json?.message === 'string') detail = json.message;
  } catch { /* not JSON */ }
  return new Error(`${what}: ${detail}`);
}

/** Redeems an invite for a join token: `{token, room}`. */
export async function redeemInvite(invite, name) {
  const res = await fetch(endpoints.redeem, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ invite, name }),
  });
  if (!res.ok) throw await replyError(res, 'invite');
  const json = await res.json();
  if (typeof json.token !== 'string') throw new Error('invite: no token in reply');
  return json;
}

/** Asks the coordinator (dev mode) for a join token. */
export async function fetchToken(room, name) {
  const res = await fetch(endpoints.token, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ room, name }),
  });
  if (!res.ok) throw new Error(`token: HTTP ${res.status}`);
  const json = await res.json();
  if (typeof json.token !== 'string') throw new Error('token: no token in reply');
  return json.token;
}
