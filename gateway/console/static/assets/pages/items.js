import { call, upload, imageUrl, listItems } from '../api.js';
import { h, field, notice, user, button, dropZone, newId } from '../dom.js';
import { datasetOr, pageHead, tagSelect, tagName } from './common.js';
import { shortTime } from './dataset.js';

const PAGE = 24;

export async function render(root, [name], ctx) {
  const ds = await datasetOr(root, name);
  if (!ds) return null;
  const filter = tagSelect(ds.tags, ['', 'All tags']);
  const [filterField] = field('Show items with a report of', filter);
  const grid = h('ul', { class: 'items', id: 'items', 'aria-label': 'Items, newest first' });
  const more = h('div');
  const listMessage = h('div');
  let cursor = null;

  root.append(pageHead('Items', ds),
    h('div', { class: 'columns wide-left' },
      h('section', { 'aria-label': 'Items' }, h('div', { class: 'row end' }, filterField), listMessage, grid, more),
      h('div', { class: 'side' }, reportForm(ds, ctx, () => reload()))));

  filter.addEventListener('change', () => reload());

  async function reload() {
    cursor = null;
    grid.replaceChildren();
    await page();
  }

  async function page() {
    listMessage.replaceChildren();
    more.replaceChildren();
    let out;
    try {
      out = await listItems(name, { tagId: Number(filter.value) || null, limit: PAGE, cursor });
    } catch (error) {
      listMessage.replaceChildren(notice(error.missing ? 'info' : 'error', error.text));
      return;
    }
    if (!out.items.length && !cursor) grid.append(h('li', { class: 'muted' }, 'No items yet: report some with the form.'));
    for (const item of out.items) grid.append(card(item));
    cursor = out.next_cursor;
    if (cursor) more.append(button('Load more', page));
  }

  function card(item) {
    const body = item.image !== undefined && item.image !== null
      ? thumbnail(item.image, `item ${item.id}`)
      : user(item.content ?? '', 'p', { class: 'text-item' });
    const reports = h('ul', { class: 'reports' });
    const li = h('li', { class: 'item', 'data-item-id': item.id }, body, reports,
      h('p', { class: 'muted small' }, `#${item.id} · `, h('time', { datetime: item.created }, shortTime(item.created))));
    item.reports.forEach(([tagId, positive], i) => {
      const title = tagName(ds, tagId);
      const reportId = item.report_ids ? item.report_ids[i] : undefined;
      const chip = h('li', { class: positive ? 'report pos' : 'report neg' },
        h('span', { 'aria-hidden': 'true' }, positive ? '✓ ' : '✗ '),
        h('span', { class: 'sr-only' }, positive ? 'is ' : 'is not '), user(title));
      chip.append(button('×', async () => {
        const bodyOut = reportId !== undefined ? { id: reportId } : { item_id: item.id, tag_id: tagId };
        try {
          await call('delete_report', bodyOut);
          chip.remove();
          ctx.announce(`Report ${title} deleted`);
        } catch (error) {
          li.append(notice('error', error.text));
        }
      }, { class: 'icon', 'aria-label': `Delete report "${title}" of item ${item.id}`, title: 'Delete this report' }));
      reports.append(chip);
    });
    return li;
  }

  await page();
  return null;
}

export function thumbnail(path, alt) {
  const img = h('img', { alt, class: 'thumb', width: 160, height: 120, decoding: 'async' });
  imageUrl(path).then((url) => {
    img.src = url;
  }, (error) => {
    img.alt = `${alt} (image not available)`;
    img.title = error.text || String(error.message || error);  // why, on hover
    img.classList.add('broken');
  });
  return img;
}

function reportForm(ds, ctx, reload) {
  const tag = tagSelect(ds.tags);
  const [tagField] = field('Tag', tag);
  const positive = h('input', { type: 'checkbox', id: newId('pos') });
  positive.checked = true;
  const sign = h('div', { class: 'check' }, positive, h('label', { for: positive.id }, 'Positive (uncheck: "is not")'));
  const message = h('div', { 'aria-live': 'polite' });
  const parts = [h('h2', { id: 'report-h' }, 'Report examples'), tagField, sign];
  if (!ds.tags.length) parts.push(notice('info', 'Create a tag first (Dataset page).'));

  async function report(kind, run) {
    message.replaceChildren(h('p', { class: 'muted' }, 'Sending…'));
    try {
      const out = await run();
      const bad = out.filter((x) => x.error);
      message.replaceChildren(notice(bad.length ? 'error' : 'ok',
        `${out.length - bad.length} ${kind} reported`, bad.length ? `, ${bad.length} refused:` : '.'));
      if (bad.length) message.append(h('ul', {}, bad.map((x) => h('li', {}, user(x.image_file || ''), `: ${x.error}`))));
      ctx.announce(`${out.length - bad.length} ${kind} reported`);
      await reload();
    } catch (error) {
      message.replaceChildren(notice('error', error.text));
    }
  }

  if (ds.kind !== 'text') {
    parts.push(dropZone('Upload images', 'image/*', (files) => report('image(s)', () => upload('report_image_tags', [
      ['tag_id', tag.value], ['positive', positive.checked ? 'true' : 'false'], ...files.map((f) => ['image_file', f]),
    ]))));
  }
  if (ds.kind !== 'image') {
    const [textsField, texts] = field('Texts, one per line', h('textarea', { rows: 5, dir: 'auto' }));
    parts.push(textsField, button('Report texts', () => {
      const contents = texts.value.split('\n').map((t) => t.trim()).filter(Boolean);
      if (!contents.length) {
        message.replaceChildren(notice('error', 'Paste at least one text.'));
        return undefined;
      }
      return report('text(s)', async () => {
        const out = await call('report_text_tags', contents.map((content) => ({
          content, tag_id: Number(tag.value), positive: positive.checked,
        })));
        texts.value = '';
        return out;
      });
    }, { class: 'primary' }));
  }
  parts.push(message);
  return h('section', { class: 'card', 'aria-labelledby': 'report-h' }, parts);
}
