import { call, datasetInfo } from '../api.js';
import { h, user, notice } from '../dom.js';

/** The dataset's kind (from list_datasets), title and tags (from dataset_info). */
export async function loadDataset(name) {
  const [list, info] = await Promise.all([call('list_datasets', {}), datasetInfo(name, true)]);
  const entry = list.find((d) => d.dataset === name);
  const tags = info.tags || [];
  return { name, kind: entry ? entry.kind : null, info, tags, byId: new Map(tags.map((t) => [t.id, t])) };
}

/** The page's dataset, or null once the page says why it could not be read. */
export async function datasetOr(root, name) {
  try {
    return await loadDataset(name);
  } catch (error) {
    failure(root, error);
    return null;
  }
}

export function pageHead(title, ds, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', {}, title, ' · ', user(ds.info.title || ds.name)), ...extra);
}

/** A <select> of the dataset's tags; first: optional [value, label] entry put first. */
export function tagSelect(tags, first) {
  const select = h('select', {});
  if (first) select.append(h('option', { value: first[0] }, first[1]));
  for (const tag of tags) select.append(h('option', { value: String(tag.id) }, tag.title));
  return select;
}

export function tagName(ds, id) {
  if (id === 0) return 'unknown';
  return ds.byId.get(id)?.title ?? `tag ${id}`;
}

export function failure(root, error) {
  root.append(notice('error', error.status === 404 && !error.missing ? 'No such dataset in this account.' : error.text));
}

/** Tags of a tagging answer as chips with probability bars. */
export function tagChips(tags) {
  if (!tags.length) return h('p', { class: 'muted small' }, 'no tag');
  return h('ul', { class: 'chips' }, tags.map((t) => h('li', { class: t.id === 0 ? 'chip unknown' : 'chip' },
    user(t.title), ' ', h('meter', { min: 0, max: 1, value: t.probability, 'aria-label': `probability of ${t.title}` }),
    ' ', h('span', { class: 'prob' }, Number(t.probability).toFixed(2)))));
}
