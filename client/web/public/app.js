// Satsuma web client: the entry module. It shows the lobby and, on join,
// puts the call together from its three parts:
//   - the model (call-model.js): the call's state and reducer, no DOM;
//   - the controller (call-controller.js): drives the room link
//     (room-link.js), the SFU link (sfu-link.js) and the E2EE link
//     (e2ee-link.js), and dispatches to the model; no DOM;
//   - the views (call-view.js, stage-view.js, controls-view.js): render the
//     model on every change and call the controller's intents. They never
//     touch the links.
//
// Plain ES modules, no CDN, no request to any other origin. scripts/build-web.sh
// builds the WebAssembly E2EE core (./pkg/) and bundles these modules into one
// (app.bundle.js, what index.html loads when it is up to date; see README).
//
// Joining needs a join token. The URL fragment may carry one (`#token=…`, from
// `satsuma token create` or your app's POST /api/v1/tokens) or a host's invite
// (`#invite=…`, redeemed for a token at POST /api/v1/invites/redeem); the page
// reads it and removes it from the address bar at once. Fragments never reach
// the server, so neither ends up in its logs. Only a server in dev mode (--dev)
// hands tokens to anyone (POST /token); otherwise the lobby explains how to get
// an invite.
//
// URL parameters: room, name, codec (VP8|VP9|H264), autojoin=1, video=WxH, fps=N, send=0
// (receive only), transform=legacy (use createEncodedStreams), simulcast=0 (send
// one video layer). Test hooks,
// honoured only when the server runs with --test-hooks (client-config.js):
// decrypt=0 (receive without decrypting), keyless=1 (never join the MLS
// group), test_* parameters, window.satsuma.drill.

import { devTokens, recordingAvailable, testHooks, testParam } from './client-config.js';
import { LocalMedia } from './local-media.js';
import { timeline } from './join-timeline.js';
import { fetchToken, jwtClaims, redeemInvite, takeFragment } from './access.js';
import { CallModel } from './call-model.js';
import { Call, prepareE2ee } from './call-controller.js';
import { CallView } from './call-view.js';
import { StageView } from './stage-view.js';
import { ControlsView } from './controls-view.js';
import { ChatPanel } from './chat-panel.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

// ---- lobby -------------------------------------------------------------------

async function lobby() {
  timeline.mark('pageLoad');
  $('boot-note')?.remove(); // the modules loaded and matched their integrity hashes
  const view = new CallView();
  const local = new LocalMedia();
  // Test hooks (testParam): null unless the server runs with --test-hooks.
  const flags = {
    decrypt: testParam('decrypt') !== '0',
    mls: testParam('keyless') !== '1',
    testVisibleOnlyTo: testParam('test_visible_only_to'),
    testKeepKeys: testParam('test_keep_keys') === '1',
    legacy: params.get('transform') === 'legacy',
    receiveOnly: params.get('send') === '0',
    simulcast: params.get('simulcast') !== '0',
  };
  // The E2EE worker loads its WebAssembly and the identity key while the lobby shows
  // the preview: at `welcome` it only has to start the MLS member.
  const e2ee = prepareE2ee(flags);
  window.satsuma = {
    call: null, local, flags, testHooks,
    timeline: () => timeline.snapshot(),
    stats: () => window.satsuma.call?.snapshotStats() ?? null,
    safetyNumber: () => $('safety-number').dataset.digits || null,
  };
  if (testHooks) {
    const drill = (what, arg) => window.satsuma.call?.drill(what, arg) ?? null;
    window.satsuma.drill = {
      dropSocket: () => drill('dropSocket'),
      stallWorker: (ms) => drill('stall', ms),
      garbage: (on) => drill('garbage', on),
      relayLag: (ms) => drill('relayLag', ms),
      failMedia: () => drill('failMedia'),
      // Restarts ICE on the current SFU session now; resolves true once connected again.
      restartIce: () => drill('restartIce'),
    };
  }
  // A token or invite in the fragment decides the room (and the token the name).
  const fragment = takeFragment();
  const access = { token: fragment.token ?? null, invite: fragment.invite ?? null, redeemed: null };
  const granted = jwtClaims(access.token ?? access.invite ?? '');
  $('name').value = params.get('name') ?? localStorage.getItem('satsuma.name') ?? '';
  $('room').value = params.get('room') ?? fragment.room ?? 'lobby';
  if (granted && typeof granted.room === 'string') {
    $('room').value = granted.room;
    $('room').readOnly = true;
    if (access.token && typeof granted.name === 'string' && granted.name && !params.get('name')) $('name').value = granted.name;
  }
  window.satsuma.access = { token: Boolean(access.token), invite: Boolean(access.invite), dev: devTokens };
  const canJoin = Boolean(access.token || access.invite || devTokens);
  $('lobby-access').hidden = canJoin;
  $('join').disabled = !canJoin;
  if (access.token) $('lobby-via').textContent = 'You are joining with the link you were given.';
  else if (access.invite) $('lobby-via').textContent = 'You were invited: join with the name you choose.';
  $('lobby-via').hidden = !(access.token || access.invite);
  /** The join token: from the link, from the invite (redeemed once), or (dev mode) from POST /token. */
  const tokenFor = (room, name) => async () => {
    if (access.token) return access.token;
    if (access.invite) {
      const fresh = access.redeemed && (jwtClaims(access.redeemed)?.exp ?? 0) * 1000 > Date.now() + 10000;
      if (!fresh) access.redeemed = (await redeemInvite(access.invite, name)).token;
      return access.redeemed;
    }
    if (devTokens) return fetchToken(room, name);
    throw new Error('no join token: ask the host for an invite link');
  };
  const codec = params.get('codec');
  if (codec && ['VP8', 'VP9', 'H264'].includes(codec)) $('codec-select').value = codec;

  const preview = async () => {
    const [width, height] = (params.get('video') ?? '640x480').split('x').map(Number);
    await local.open({
      cameraId: $('camera-select').value || undefined, micId: $('mic-select').value || undefined,
      width: width || 640, height: height || 480, frameRate: Number(params.get('fps')) || undefined,
    });
    $('preview').srcObject = local.video ? new MediaStream([local.video]) : null;
    $('preview-note').hidden = !local.problem;
    $('preview-note').textContent = local.problem ?? '';
  };
  const fillDevices = async () => {
    const { cameras, mics } = await local.devices();
    for (const [select, list] of [[$('camera-select'), cameras], [$('mic-select'), mics]]) {
      const current = select.value;
      select.replaceChildren(...list.map((d) => Object.assign(document.createElement('option'), { value: d.id, textContent: d.label })));
      if (list.some((d) => d.id === current)) select.value = current;
    }
  };
  // The preview opens while the page goes on: an automatic join does not wait for the
  // camera (the call pushes local tracks once it is open).
  const previewReady = preview().finally(() => timeline.mark('lobbyReady'));
  const devicesReady = previewReady.then(fillDevices).catch(() => {});
  $('camera-select').onchange = preview;
  $('mic-select').onchange = preview;

  const join = async () => {
    timeline.mark('join');
    const name = $('name').value.trim() || 'Guest';
    const room = $('room').value.trim();
    // Redeem an invite before leaving the lobby, so a revoked or expired one says so here.
    if (access.invite && !access.redeemed) access.redeemed = (await redeemInvite(access.invite, name)).token;
    localStorage.setItem('satsuma.name', name);
    $('preview').srcObject = null;
    const model = new CallModel({ room, name, receiveOnly: flags.receiveOnly, recordingAvailable });
    const call = new Call({
      model, room, name, codec: $('codec-select').value, local, flags, getToken: tokenFor(room, name), e2ee, localReady: previewReady,
    });
    window.satsuma.call = call;
    // The views render the model and send the user's intents to the controller.
    const stage = new StageView({ grid: $('grid'), intents: call });
    const controls = new ControlsView({ intents: call });
    const chat = new ChatPanel({ intents: call });
    view.bind(call);
    model.addEventListener('change', (ev) => {
      const { changed } = ev.detail;
      view.render(model.state, changed);
      stage.render(model.state, changed);
      controls.render(model.state, changed);
      chat.render(model.state, changed);
    });
    const all = new Set(['screen', 'banner', 'link', 'safety', 'people', 'host', 'tiles', 'stage', 'controls']);
    view.render(model.state, new Set(['host', 'people']));
    controls.render(model.state, all);
    chat.render(model.state, new Set(['chat']));
    // A page that closes (tab closed, navigated away, reloaded) leaves the room at once, so
    // the room's next MLS change does not wait for it through its resume window. (A crash or
    // a lost network still takes the presence timeout; the coordinator does not wait for a
    // member whose connection is gone before `execute`.)
    window.addEventListener('pagehide', () => {
      if (!call.ended) call.leave();
    });
    await call.start();
  };
  $('lobby-form').onsubmit = (ev) => {
    ev.preventDefault();
    if (!canJoin) return;
    join().catch((err) => view.banner(`Could not join: ${err.message}`, 'bad'));
  };
  $('rejoin').onclick = () => location.reload();
  if (params.get('autojoin') === '1' && canJoin) join().catch((err) => view.banner(`Could not join: ${err.message}`, 'bad'));
  await devicesReady;
  window.satsuma.lobbyReady = true;
}

lobby();
