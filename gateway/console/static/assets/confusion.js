// The live version's out-of-fold confusion counts (dataset_info's "confusion") as an HTML table: for an
// exclusive head, true tag (rows) against the tag returned (columns, then unknown); for a multi-label head,
// each tag's true and false positives and negatives. Titles are text nodes with their own direction.

import { h, user } from './dom.js';

/** confusion: dataset_info's "confusion" (not null); tags: dataset_info's tags, for the titles. */
export function confusionTable(confusion, tags) {
  const byId = new Map((tags || []).map((t) => [t.id, t]));
  const label = (id) => byId.get(id)?.title ?? `tag ${id} (deleted)`;
  return confusion.exclusive && Array.isArray(confusion.matrix)
    ? matrixTable(confusion.tag_ids, confusion.matrix, label)
    : countsTable(confusion.tag_ids, confusion.counts || [], label);
}

function matrixTable(ids, matrix, label) {
  const rowNames = [...ids.map(label), 'no tag'];
  const colNames = [...ids.map(label), 'unknown'];
  const head = h('tr', {},
    h('td', { class: 'corner small muted' }, 'true ↓ · returned →'),
    colNames.map((name, j) => h('th', { scope: 'col', class: j === ids.length ? 'extra' : null },
      j === ids.length ? name : user(name))));
  const body = matrix.map((row, i) => h('tr', { 'data-tag-id': i < ids.length ? ids[i] : 'none' },
    h('th', { scope: 'row', class: i === ids.length ? 'extra' : null },
      i === ids.length ? h('span', {}, 'no tag', h('br'), h('span', { class: 'small muted' }, 'negatives only'))
        : user(rowNames[i])),
    row.map((n, j) => {
      const right = i === j || (i === ids.length && j === ids.length);
      return h('td', {
        class: `num${right ? ' hit' : n ? ' miss' : ''}`,
        title: `true: ${rowNames[i]}, returned: ${colNames[j]}: ${n}`,
      }, String(n));
    })));
  const right = matrix.reduce((sum, row, i) => sum + row[i], 0);
  const total = matrix.reduce((sum, row) => sum + row.reduce((a, b) => a + b, 0), 0);
  return h('div', { class: 'table-wrap' }, h('table', { class: 'grid compact confusion', id: 'confusion-table' },
    h('caption', {}, `Each reported item's true tag (rows) against the tag returned for it (columns) when it was `
      + `held out of the fit: ${right} of ${total} right, on the diagonal.`),
    h('thead', {}, head), h('tbody', {}, body)));
}

const COUNTS = [['tp', 'True positives', true], ['fp', 'False positives', false],
  ['fn', 'False negatives', false], ['tn', 'True negatives', true]];

function countsTable(ids, counts, label) {
  const body = ids.map((id, i) => {
    const c = counts[i];
    return h('tr', { 'data-tag-id': id }, h('th', { scope: 'row' }, user(label(id))),
      c ? COUNTS.map(([key, name, right]) => h('td', {
        class: `num${right ? ' hit' : c[key] ? ' miss' : ''}`, title: `${label(id)}: ${name.toLowerCase()} ${c[key]}`,
      }, String(c[key])))
        : h('td', { colspan: COUNTS.length, class: 'muted small' }, 'too few reports to evaluate'));
  });
  return h('div', { class: 'table-wrap' }, h('table', { class: 'grid compact confusion', id: 'confusion-table' },
    h('caption', {}, 'Per tag, the reported items held out of the fit, counted at the tag\'s cross-validated '
      + 'threshold (an item may have several tags).'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Tag'), COUNTS.map(([, name]) => h('th', { scope: 'col' }, name)))),
    h('tbody', {}, body)));
}
