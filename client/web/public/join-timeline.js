// The join timeline: when each step of joining a call was first reached, in
// milliseconds since the page's navigation started (`performance.now()`), so
// "page load" to "first decoded frame" reads as one line. Steps are recorded
// once (the first time); later repeats (a rejoin, an ICE restart) do not move
// them. Tests and `scripts/bench-join.sh` read it as `window.satsuma.timeline()`.
//
// Steps, in the order a join normally reaches them:
//   pageLoad        the app's modules loaded (integrity-checked) and run
//   wasmReady       the E2EE worker compiled and instantiated its WebAssembly
//   workerReady     ... and loaded the identity key: ready to become a member
//   lobbyReady      the camera preview is open (an automatic join does not wait
//                   for it: only pushing the local tracks does)
//   join            join clicked (or autojoin)
//   token           the join token is in hand
//   helloSent       the WebSocket is open and `hello` went out
//   welcome         the coordinator's `welcome` (participant id, room snapshot)
//   keyPackageSent  this page's KeyPackage went to the room
//   mlsWelcome      the commit that adds this page (with its MLS Welcome) arrived
//   mlsMember       the Welcome is processed: this page holds the group's keys
//   execute         the room's `execute` for that epoch: everyone sends with it
//   sfuSession      the SFU session exists
//   ice             ICE connected
//   dtls            DTLS connected (peer connection `connected`)
//   firstPacket     the first RTP packet of a remote video track
//   firstKeyframe   the first remote video keyframe reached the E2EE worker
//   firstDecrypted  the first remote video frame decrypted
//   firstDecoded    the first remote video frame decoded (`framesDecoded > 0`)

export const JOIN_STEPS = [
  'pageLoad', 'wasmReady', 'workerReady', 'lobbyReady', 'join', 'token', 'helloSent', 'welcome',
  'keyPackageSent', 'mlsWelcome', 'mlsMember', 'execute', 'sfuSession', 'ice', 'dtls',
  'firstPacket', 'firstKeyframe', 'firstDecrypted', 'firstDecoded',
];

const STEP_SET = new Set(JOIN_STEPS);

class JoinTimeline {
  constructor() {
    this.marks = new Map();
  }

  /** Records `step` at `at` (ms since navigation start; default now) unless it was recorded already. */
  mark(step, at = performance.now()) {
    if (!STEP_SET.has(step) || this.marks.has(step)) return;
    if (typeof at !== 'number' || !Number.isFinite(at)) return;
    this.marks.set(step, Math.round(at));
  }

  /** Records a step measured in another realm (a worker): `epochMs` is `timeOrigin + now()` there. */
  markAbsolute(step, epochMs) {
    if (typeof epochMs !== 'number') return;
    this.mark(step, epochMs - performance.timeOrigin);
  }

  has(step) {
    return this.marks.has(step);
  }

  /** `{step: ms}` in step order, only the steps reached. */
  snapshot() {
    const out = {};
    for (const step of JOIN_STEPS) if (this.marks.has(step)) out[step] = this.marks.get(step);
    return out;
  }
}

/** This page's join timeline. */
export const timeline = new JoinTimeline();
