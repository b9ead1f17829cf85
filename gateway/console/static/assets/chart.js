// Per-tag precision, recall and F1 as grouped bars: one row per tag, the title in HTML (its own direction,
// so a Persian title reads right to left), the bars in SVG drawn here.

import { h, s, user, pct } from './dom.js';

export const SERIES = [
  ['precision', 'Precision', 'bar-p'],
  ['recall', 'Recall', 'bar-r'],
  ['f1', 'F1', 'bar-f'],
];

const WIDTH = 420;
const BAR = 11;
const GAP = 3;

function bars(evaluation) {
  const height = SERIES.length * (BAR + GAP) - GAP;
  const svg = s('svg', { width: WIDTH + 52, height, viewBox: `0 0 ${WIDTH + 52} ${height}`, 'aria-hidden': 'true' });
  for (const x of [0.25, 0.5, 0.75, 1]) {
    svg.append(s('line', { x1: WIDTH * x, x2: WIDTH * x, y1: 0, y2: height, class: 'gridline' }));
  }
  SERIES.forEach(([key, , cls], i) => {
    const value = evaluation ? evaluation[key] : null;
    const y = i * (BAR + GAP);
    if (value === null || value === undefined) {
      svg.append(s('text', { x: 2, y: y + BAR - 2, class: 'bar-none' }, '–'));
      return;
    }
    const w = Math.max(1, (WIDTH * Math.min(100, Math.max(0, value))) / 100);
    svg.append(s('rect', { x: 0, y, width: w, height: BAR, rx: 2, class: cls }));
    svg.append(s('text', { x: w + 4, y: y + BAR - 1.5, class: 'bar-value' }, `${value.toFixed(1)}`));
  });
  return svg;
}

/** tags: [{id, title, evaluation: {precision, recall, f1} | null}] */
export function metricsChart(tags) {
  const legend = h('ul', { class: 'legend' }, SERIES.map(([, label, cls]) =>
    h('li', {}, h('span', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), label)));
  const rows = tags.map((tag) => {
    const e = tag.evaluation;
    const summary = e
      ? `precision ${pct(e.precision)}, recall ${pct(e.recall)}, F1 ${pct(e.f1)}`
      : 'too few reports to evaluate';
    return h('div', { class: 'chart-row', role: 'listitem', 'aria-label': `${tag.title}: ${summary}` },
      user(tag.title, 'span', { class: 'chart-label', title: tag.title }),
      bars(e),
      e ? null : h('span', { class: 'muted small' }, 'too few reports'));
  });
  return h('figure', { class: 'chart' },
    h('figcaption', {}, 'Cross-validated figures per tag at the last training (percent)'),
    legend,
    h('div', { role: 'list', class: 'chart-rows' }, rows),
    h('div', { class: 'chart-row chart-axis', 'aria-hidden': 'true' }, h('span'), axis()));
}

function axis() {
  const svg = s('svg', { width: WIDTH + 52, height: 14, viewBox: `0 0 ${WIDTH + 52} 14` });
  for (const v of [0, 25, 50, 75, 100]) {
    const anchor = v === 0 ? 'start' : v === 100 ? 'middle' : 'middle';
    svg.append(s('text', { x: (WIDTH * v) / 100, y: 11, 'text-anchor': anchor, class: 'tick' }, String(v)));
  }
  return svg;
}
