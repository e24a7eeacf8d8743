// Make-before-break moves of this page's media between SFU sessions (the coordinator's
// `move`: the node of the page's session drains or is down). The controller keeps the old
// link, with its pushes and pulls, while it builds the new one, and asks `MoveOverlap`,
// after each look at both links' statistics, whether the old one may go:
//
//   - receiving: every track that was still arriving on the old link (its decoded-frame or,
//     for audio, packet count grew since the move began) has arrived on the new one (video:
//     a decoded frame; audio: a packet);
//   - sending: every track pushed on the new link has sent packets for MOVE_GRACE_MS (the
//     others see its new names when it is announced and need a moment to pull them before
//     the old names are withdrawn), or nothing is pushed;
//   - or, whatever the state, MOVE_MAX_OVERLAP_MS after the move began (a node that is down
//     delivers nothing; a publisher whose camera is off sends no frames).
//
// Pure: statistics and times in, a decision out (unit tests: tests/move-unit.test.mjs).

/** How long the new pushes must have been sending before the old link goes (ms). */
export const MOVE_GRACE_MS = 1500;
/** The longest both links are kept (ms). */
export const MOVE_MAX_OVERLAP_MS = 8000;

/** What counts as media arriving on a receiving track's statistics. */
function arrived(kind, s) {
  if (!s) return 0;
  return kind === 'audio' ? s.packetsReceived ?? 0 : s.framesDecoded ?? 0;
}

export class MoveOverlap {
  /**
   * @param {object} o
   * @param {number} o.now the move's start (ms)
   * @param {Map<string, {kind: string, mid: string|null}>} o.oldPulls the old link's pulls by track name
   * @param {Record<string, object>} o.oldTracks the old link's per-mid statistics at the start (SfuLink.stats().tracks)
   */
  constructor({ now, oldPulls, oldTracks }) {
    this.start = now;
    this.oldPulls = oldPulls;
    this.baseline = new Map();
    for (const [name, p] of oldPulls) this.baseline.set(name, arrived(p.kind, p.mid ? oldTracks[p.mid] : null));
    this.flowing = new Set(); // track names seen arriving on the old link since the start
    this.sendingSince = null;
    this.reason = null; // why the old link may go: 'delivered' | 'timeout'
  }

  /**
   * One look at both links. Returns true once the old link may be closed (then `reason`).
   * @param {object} o
   * @param {number} o.now
   * @param {Record<string, object>} o.oldTracks the old link's per-mid statistics now
   * @param {Map<string, {kind: string, mid: string|null}>} o.newPulls the new link's pulls by track name
   * @param {Record<string, object>} o.newTracks the new link's per-mid statistics now
   * @param {string[]} o.pushedMids the mids of the new link's pushed tracks
   */
  observe({ now, oldTracks, newPulls, newTracks, pushedMids }) {
    for (const [name, p] of this.oldPulls) {
      if (p.mid && arrived(p.kind, oldTracks[p.mid]) > (this.baseline.get(name) ?? 0)) this.flowing.add(name);
    }
    if (now - this.start >= MOVE_MAX_OVERLAP_MS) {
      this.reason = 'timeout';
      return true;
    }
    const receiving = [...this.flowing].every((name) => {
      const p = newPulls.get(name);
      return Boolean(p?.mid) && arrived(p.kind, newTracks[p.mid]) > 0;
    });
    const sending = pushedMids.every((mid) => Object.values(newTracks)
      .some((s) => s.type === 'outbound-rtp' && s.mid === mid && (s.packetsSent ?? 0) > 0));
    if (!sending || pushedMids.length === 0) this.sendingSince = sending ? now - MOVE_GRACE_MS : null;
    else this.sendingSince ??= now;
    if (receiving && this.sendingSince !== null && now - this.sendingSince >= MOVE_GRACE_MS) {
      this.reason = 'delivered';
      return true;
    }
    return false;
  }
}
