import { call, datasetInfo } from '../api.js';
import { h, field, notice, user, button } from '../dom.js';

export async function render(root, _params, ctx) {
  const listBox = h('section', { 'aria-labelledby': 'datasets-h' },
    h('h1', { id: 'datasets-h' }, 'Datasets'));
  const table = h('div', { class: 'table-wrap' });
  listBox.append(table);
  root.append(h('div', { class: 'columns' }, listBox, createForm(ctx, () => load())));

  async function load() {
    table.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
    let datasets;
    try {
      datasets = await call('list_datasets', {});
    } catch (error) {
      table.replaceChildren(notice('error', error.text));
      return;
    }
    if (!datasets.length) {
      table.replaceChildren(h('p', {}, 'No datasets yet: create one with the form.'));
      return;
    }
    const infos = await Promise.all(datasets.map((d) => datasetInfo(d.dataset, false).catch(() => null)));
    const rows = datasets.map((d, i) => {
      const info = infos[i] || {};
      return h('tr', {},
        h('th', { scope: 'row' }, h('a', { href: ctx.datasetLink(d.dataset) }, user(d.dataset))),
        h('td', {}, user(d.title)),
        h('td', {}, d.kind || 'not fixed yet'),
        h('td', {}, h('span', { class: `state ${d.state}` }, d.state)),
        h('td', { class: 'num' }, info.report_count ?? '–'),
        h('td', { class: 'num' }, info.data_count ?? '–'),
        h('td', { class: 'num' }, info.version ?? '–'));
    });
    table.replaceChildren(h('table', { class: 'grid' },
      h('caption', { class: 'sr-only' }, 'Your datasets'),
      h('thead', {}, h('tr', {}, ['Name', 'Title', 'Kind', 'State', 'Reports', 'Items', 'Live version']
        .map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows)));
  }

  await load();
}

function createForm(ctx, reload) {
  const [nameField, name] = field('Name', h('input', { required: true, maxlength: 200, autocomplete: 'off' }),
    'Used in API calls, e.g. "places".');
  const [titleField, title] = field('Title', h('input', { maxlength: 500, dir: 'auto' }), 'Shown to people.');
  const [kindField, kind] = field('Kind', h('select', {},
    h('option', { value: 'image' }, 'image (photos, video frames)'), h('option', { value: 'text' }, 'text')));
  const [tagsField, tags] = field('Tags, one per line', h('textarea', { rows: 4, dir: 'auto' }));
  const message = h('div');
  const form = h('form', { class: 'card', 'aria-labelledby': 'create-h' },
    h('h2', { id: 'create-h' }, 'New dataset'),
    nameField, titleField, kindField, tagsField,
    h('button', { type: 'submit', class: 'primary' }, 'Create dataset'), message);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.replaceChildren();
    const dataset = name.value.trim();
    if (!dataset) {
      message.append(notice('error', 'A name is needed.'));
      name.focus();
      return;
    }
    const body = { dataset, kind: kind.value };
    if (title.value.trim()) body.title = title.value.trim();
    try {
      await call('create_dataset', body);
      const titles = tags.value.split('\n').map((t) => t.trim()).filter(Boolean);
      for (const t of titles) await call('create_tag', { dataset, title: t });
      message.append(notice('ok', `Created ${dataset} with ${titles.length} tag(s). `,
        h('a', { href: ctx.datasetLink(dataset) }, 'Open it')));
      ctx.announce(`Dataset ${dataset} created`);
      form.reset();
      await reload();
    } catch (error) {
      message.append(notice('error', error.text));
    }
  });
  return h('div', { class: 'side' }, form, h('p', { class: 'muted' },
    button('Refresh list', reload, { class: 'link' })));
}
