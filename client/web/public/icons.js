// Line icons for the call controls, as inline SVG built with the DOM (the
// CSP allows no inline markup from strings). 24x24, drawn with currentColor.
// Decorative: every button that shows one also has a text label.

const SVG = 'http://www.w3.org/2000/svg';

/** Each icon: a list of [element, attributes]. */
const ICONS = {
  mic: [
    ['rect', { x: 9, y: 3, width: 6, height: 11, rx: 3 }],
    ['path', { d: 'M5 11a7 7 0 0 0 14 0M12 18v3' }],
  ],
  'mic-off': [
    ['path', { d: 'M9 9V6a3 3 0 0 1 6 0v5M15 13.5A3 3 0 0 1 9.4 12.6' }],
    ['path', { d: 'M5 11a7 7 0 0 0 11.5 5.3M19 11a7 7 0 0 1-.6 2.8M12 18v3M3 3l18 18' }],
  ],
  cam: [
    ['rect', { x: 3, y: 6, width: 13, height: 12, rx: 2 }],
    ['path', { d: 'M16 10l5-3v10l-5-3z' }],
  ],
  'cam-off': [
    ['path', { d: 'M16 10l5-3v10l-5-3M10 6h4a2 2 0 0 1 2 2v4M16 16v0a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2' }],
    ['path', { d: 'M3 3l18 18' }],
  ],
  screen: [
    ['rect', { x: 3, y: 4, width: 18, height: 12, rx: 1.5 }],
    ['path', { d: 'M8 20h8M12 16v4M12 13V7M9 10l3-3 3 3' }],
  ],
  'screen-off': [
    ['rect', { x: 3, y: 4, width: 18, height: 12, rx: 1.5 }],
    ['path', { d: 'M8 20h8M12 16v4M9.5 7.5l5 5M14.5 7.5l-5 5' }],
  ],
  hand: [
    ['path', { d: 'M8 13V5.5a1.5 1.5 0 0 1 3 0V12M11 11V4a1.5 1.5 0 0 1 3 0v7M14 11V5.5a1.5 1.5 0 0 1 3 0V14' }],
    ['path', { d: 'M17 9.5a1.5 1.5 0 0 1 3 0V15a6 6 0 0 1-6 6h-1.5a6 6 0 0 1-4.7-2.3L4.5 15.6a1.5 1.5 0 0 1 2.3-1.9L8 15' }],
  ],
  grid: [
    ['rect', { x: 3, y: 5, width: 8, height: 6, rx: 1 }],
    ['rect', { x: 13, y: 5, width: 8, height: 6, rx: 1 }],
    ['rect', { x: 3, y: 13, width: 8, height: 6, rx: 1 }],
    ['rect', { x: 13, y: 13, width: 8, height: 6, rx: 1 }],
  ],
  speaker: [
    ['rect', { x: 3, y: 3, width: 18, height: 12, rx: 1 }],
    ['rect', { x: 3, y: 17, width: 5, height: 4, rx: 1 }],
    ['rect', { x: 9.5, y: 17, width: 5, height: 4, rx: 1 }],
    ['rect', { x: 16, y: 17, width: 5, height: 4, rx: 1 }],
  ],
  leave: [
    ['path', { d: 'M3 14.5c5-5 13-5 18 0l-2.5 2.5-3-1.5v-2.5a10 10 0 0 0-7 0v2.5l-3 1.5z' }],
  ],
  pin: [
    ['path', { d: 'M4 4h6M4 4v6M20 20h-6M20 20v-6M4 4l6 6M20 20l-6-6' }],
  ],
  record: [
    ['circle', { cx: 12, cy: 12, r: 8 }],
    ['circle', { cx: 12, cy: 12, r: 3.5, fill: 'currentColor' }],
  ],
  'record-stop': [
    ['circle', { cx: 12, cy: 12, r: 8 }],
    ['rect', { x: 9, y: 9, width: 6, height: 6, fill: 'currentColor' }],
  ],
  chat: [
    ['path', { d: 'M5 4h14a2 2 0 0 1 2 2v9a2 2 0 0 1-2 2h-8l-5 4v-4H5a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z' }],
    ['path', { d: 'M7.5 9h9M7.5 12.5h6' }],
  ],
  speaking: [
    ['path', { d: 'M4 10v4M8 7v10M12 4v16M16 7v10M20 10v4' }],
  ],
};

/** An <svg> of icon `name` (aria-hidden). */
export function icon(name) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', 'icon');
  svg.dataset.icon = name;
  for (const [tag, attrs] of ICONS[name] ?? []) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    svg.append(node);
  }
  return svg;
}

/** Replaces the icon inside `button` (its first <svg>) by `name`, if it differs. */
export function setIcon(button, name) {
  const old = button.querySelector('svg.icon');
  if (old?.dataset.icon === name) return;
  const next = icon(name);
  if (old) old.replaceWith(next);
  else button.prepend(next);
}
