import { call } from '../api.js';
import { h, field, notice, user, button } from '../dom.js';
import { datasetOr, pageHead, tagSelect, tagName } from './common.js';
import { thumbnail } from './items.js';

const REASONS = {
  uncertain: 'the head is unsure about it (its score is near the threshold)',
  suspect: 'its report disagrees with the cross-validated score (a likely label mistake)',
};

export async function render(root, [name], ctx) {
  const ds = await datasetOr(root, name);
  if (!ds) return null;
  const filter = tagSelect(ds.tags, ['', 'Any tag']);
  const [filterField] = field('Suggest for', filter);
  const stage = h('section', { class: 'card queue', 'aria-live': 'polite', id: 'queue' });
  const tally = { yes: 0, no: 0, skip: 0 };
  const tallyLine = h('p', { class: 'muted small', id: 'queue-tally' });
  root.append(pageHead('Label queue', ds,
    h('p', { class: 'muted' }, 'One suggestion at a time. Keys: ', h('kbd', {}, 'y'), ' yes, ',
      h('kbd', {}, 'n'), ' no, ', h('kbd', {}, 's'), ' skip.')),
    h('div', { class: 'row end' }, filterField, button('Fetch suggestions', () => load())), stage, tallyLine);

  let queue = [];
  let current = null;
  let busy = false;

  async function load() {
    stage.replaceChildren(h('p', { class: 'muted' }, 'Asking for suggestions…'));
    const body = { dataset: name, limit: 20 };
    if (Number(filter.value)) body.tag_id = Number(filter.value);
    try {
      queue = await call('suggest_labels', body);
    } catch (error) {
      current = null;
      stage.replaceChildren(notice(error.missing ? 'info' : 'error', error.text));
      return;
    }
    next();
  }

  function next() {
    current = queue.shift() || null;
    if (!current) {
      stage.replaceChildren(h('p', {}, 'Nothing to label right now. Train after your answers, then fetch again.'));
      return;
    }
    const title = tagName(ds, current.tag_id);
    const shown = current.image ? thumbnail(current.image, `item ${current.item_id}`)
      : user(current.content ?? '', 'p', { class: 'text-item big' });
    stage.replaceChildren(
      h('div', { class: 'suggestion', 'data-item-id': current.item_id, 'data-tag-id': current.tag_id }, shown,
        h('div', {},
          h('p', { class: 'question' }, 'Is this ', user(title, 'strong'), '?'),
          h('p', { class: 'muted small' }, `Score ${Number(current.probability).toFixed(2)}; suggested because `,
            REASONS[current.reason] || current.reason, '.'),
          h('div', { class: 'row' },
            button('Yes (y)', () => answer(true), { class: 'primary', 'aria-keyshortcuts': 'y' }),
            button('No (n)', () => answer(false), { 'aria-keyshortcuts': 'n' }),
            button('Skip (s)', () => answer(null), { class: 'link', 'aria-keyshortcuts': 's' })),
          h('p', { class: 'muted small' }, `${queue.length} more in this batch`))));
  }

  async function answer(positive) {
    if (!current || busy) return;
    busy = true;
    const item = current;
    try {
      if (positive !== null) {
        await report(item, positive);
        tally[positive ? 'yes' : 'no'] += 1;
        ctx.announce(`${positive ? 'Yes' : 'No'} recorded for ${tagName(ds, item.tag_id)}`);
      } else {
        tally.skip += 1;
      }
      tallyLine.textContent = `This session: ${tally.yes} yes, ${tally.no} no, ${tally.skip} skipped.`;
      next();
    } catch (error) {
      stage.append(notice('error', error.text || error.message));
    } finally {
      busy = false;
    }
  }

  async function report(item, positive) {
    // By item id: the label lands on the stored item itself (text or image), nothing is sent again.
    return call('report_items', [{ item_id: item.item_id, tag_id: item.tag_id, positive }]);
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target instanceof HTMLElement && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName))) return;
    const key = event.key.toLowerCase();
    if (key === 'y') answer(true);
    else if (key === 'n') answer(false);
    else if (key === 's') answer(null);
    else return;
    event.preventDefault();
  }
  document.addEventListener('keydown', onKey);
  await load();
  return () => document.removeEventListener('keydown', onKey);
}
