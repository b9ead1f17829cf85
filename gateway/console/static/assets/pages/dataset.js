import { call, datasetInfo } from '../api.js';
import { h, field, notice, user, pct, button, newId } from '../dom.js';
import { metricsChart } from '../chart.js';
import { confusionTable } from '../confusion.js';

const BUSY = new Set(['waiting', 'training']);
const POLL_MS = 1500;

export async function render(root, [name], ctx) {
  let timer = null;
  let closed = false;
  const head = h('div', { class: 'page-head' });
  const training = h('section', { class: 'card', 'aria-labelledby': 'train-h' });
  const chartBox = h('section', { class: 'card', 'aria-labelledby': 'chart-h' });
  const confusionBox = h('section', { class: 'card', 'aria-labelledby': 'confusion-h', id: 'confusion' });
  const tagsBox = h('section', { class: 'card', 'aria-labelledby': 'tags-h' });
  const versionsBox = h('section', { class: 'card', 'aria-labelledby': 'versions-h' });
  root.append(head, h('div', { class: 'columns wide-left' },
    h('div', {}, chartBox, confusionBox, tagsBox), h('div', { class: 'side' }, training, versionsBox)));

  const trainState = h('span', { class: 'state', id: 'train-state' });
  const trainNote = h('div', { 'aria-live': 'polite', id: 'train-note' });
  const force = h('input', { type: 'checkbox', id: newId('force') });
  training.append(
    h('h2', { id: 'train-h' }, 'Training'),
    h('p', {}, 'State: ', trainState),
    h('div', { class: 'row' },
      button('Train now', train, { class: 'primary', id: 'train-button' }),
      h('span', { class: 'check' }, force, h('label', { for: force.id }, 'Force: promote even if worse'))),
    trainNote);

  let info = null;

  async function refresh() {
    try {
      info = await datasetInfo(name, true);
    } catch (error) {
      head.replaceChildren(notice('error', error.status === 404 && !error.missing
        ? `No dataset named "${name}" in this account.` : error.text));
      return null;
    }
    if (closed) return null;
    drawHead(info);
    drawTraining(info);
    chartBox.replaceChildren(h('h2', { id: 'chart-h' }, 'What was learned'), overall(info),
      (info.tags || []).length ? metricsChart(info.tags) : h('p', {}, 'No tags yet.'));
    confusionBox.replaceChildren(h('h2', { id: 'confusion-h' }, 'Confusion matrix'),
      info.confusion ? confusionTable(info.confusion, info.tags) : h('p', { class: 'muted' }, info.version == null
        ? 'Not trained yet: the matrix comes from the cross-validation of the first fit.'
        : 'This version has no cross-validated counts (too few reports, or fitted before they were kept).'));
    drawTags(info);
    await drawVersions();
    return info;
  }

  function drawHead(i) {
    head.replaceChildren(
      h('h1', {}, user(i.title || name)),
      h('p', { class: 'meta' },
        h('span', {}, 'name ', user(name, 'code')), ' · ',
        h('span', { class: `state ${i.state}`, id: 'dataset-state' }, i.state), ' · ',
        `${i.report_count} reports on ${i.data_count} items`, ' · ',
        `live version ${i.version ?? '–'}`,
        i.suggestions ? [' · ', h('a', { href: ctx.datasetLink(name, 'queue') }, `${i.suggestions} suggestion(s) to label`)] : null));
  }

  function drawTraining(i) {
    trainState.textContent = i.state;
    trainState.className = `state ${i.state}`;
    if (BUSY.has(i.state)) schedule();
  }

  function schedule() {
    if (timer || closed) return;
    timer = setTimeout(async () => {
      timer = null;
      let next;
      try {
        next = await datasetInfo(name, false);
      } catch (error) {
        trainNote.replaceChildren(notice('error', error.text));
        schedule();
        return;
      }
      if (closed) return;
      trainState.textContent = next.state;
      trainState.className = `state ${next.state}`;
      if (BUSY.has(next.state)) {
        schedule();
      } else {
        ctx.announce(`Training finished: ${next.state}`);
        trainNote.replaceChildren(notice(next.state === 'failed' ? 'error' : 'ok', `Training finished: ${next.state}.`));
        await refresh();
      }
    }, POLL_MS);
  }

  async function train() {
    const body = { dataset: name };
    if (force.checked) body.force = true;
    try {
      const out = await call('train_dataset', body);
      trainState.textContent = out.state;
      trainState.className = `state ${out.state}`;
      trainNote.replaceChildren(notice('info', `Queued (${out.state}); this page updates by itself.`));
      ctx.announce('Training queued');
      schedule();
    } catch (error) {
      trainNote.replaceChildren(notice('error', error.status === 422 && force.checked
        ? `${error.text} (this server may not know "force" yet)` : error.text));
    }
  }

  function drawTags(i) {
    const tags = i.tags || [];
    const rows = tags.map((tag) => tagRow(tag));
    const [titleField, title] = field('New tag title', h('input', { maxlength: 500, dir: 'auto', required: true }));
    const message = h('div');
    const form = h('form', { class: 'row end' }, titleField, h('button', { type: 'submit' }, 'Add tag'), message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      if (!title.value.trim()) return;
      try {
        await call('create_tag', { dataset: name, title: title.value.trim() });
        ctx.announce('Tag added');
        await refresh();
      } catch (error) {
        message.replaceChildren(notice('error', error.text));
      }
    });
    tagsBox.replaceChildren(
      h('h2', { id: 'tags-h' }, 'Tags, counts and thresholds'),
      h('p', { class: 'muted small' },
        'Reports: labels given to the tag; predictions: how often tagging calls returned it. ',
        'A threshold you set overrides the learned one (empty: learned).'),
      h('div', { class: 'table-wrap' }, h('table', { class: 'grid compact', id: 'tags-table' },
        h('thead', {}, h('tr', {}, ['Tag', 'Reports', 'Predictions', 'Precision', 'Recall', 'F1',
          'Threshold'].map((c) => h('th', { scope: 'col' }, c)))),
        h('tbody', {}, rows))),
      form);
  }

  function tagRow(tag) {
    const e = tag.evaluation;
    const input = h('input', {
      type: 'number', min: '0.01', max: '0.99', step: '0.01', inputmode: 'decimal', class: 'threshold',
      placeholder: tag.threshold === undefined || tag.threshold === null ? 'learned' : Number(tag.threshold).toFixed(2),
      'aria-label': `Threshold for ${tag.title}`,
    });
    const message = h('span', { class: 'small', 'aria-live': 'polite' });
    async function save(value) {
      try {
        await call('update_tag', { dataset: name, tag_id: tag.id, threshold: value });
        message.replaceChildren(notice('ok', value === null ? 'learned threshold restored' : 'saved'));
        ctx.announce('Threshold saved');
        input.value = '';
        const fresh = await datasetInfo(name, true);
        const now = (fresh.tags || []).find((t) => t.id === tag.id);
        if (now && now.threshold !== undefined && now.threshold !== null) input.placeholder = Number(now.threshold).toFixed(2);
      } catch (error) {
        message.replaceChildren(notice('error', error.status === 422
          ? `${error.text} (this server may not take thresholds yet)` : error.text));
      }
    }
    return h('tr', { 'data-tag-id': tag.id },
      h('th', { scope: 'row' }, user(tag.title), tag.active === false ? h('span', { class: 'muted' }, ' (inactive)') : null,
        h('br'), h('span', { class: 'small muted' }, `id ${tag.id}`)),
      h('td', { class: 'num' }, tag.reports),
      h('td', { class: 'num' }, tag.predictions),
      h('td', { class: 'num' }, pct(e?.precision)),
      h('td', { class: 'num' }, pct(e?.recall)),
      h('td', { class: 'num' }, pct(e?.f1)),
      h('td', { class: 'threshold-cell' },
        h('form', {
          class: 'inline',
          onsubmit: (event) => {
            event.preventDefault();
            const value = Number(input.value);
            if (!input.value || !(value > 0 && value < 1)) {
              message.replaceChildren(notice('error', 'between 0 and 1'));
              return;
            }
            save(value);
          },
        }, input, h('button', { type: 'submit', 'aria-label': `Save threshold for ${tag.title}` }, 'Set'),
        button('Learned', () => save(null), { 'aria-label': `Use the learned threshold for ${tag.title}`, class: 'link' })),
        message));
  }

  async function drawVersions() {
    const body = [h('h2', { id: 'versions-h' }, 'Versions')];
    let versions;
    try {
      versions = await call('list_versions', { dataset: name });
    } catch (error) {
      versionsBox.replaceChildren(...body, notice('info', error.text));
      return;
    }
    if (closed) return;
    if (!versions.length) {
      versionsBox.replaceChildren(...body, h('p', { class: 'muted' }, 'No fits yet: train the dataset.'));
      return;
    }
    const held = versions.find((v) => v.state === 'held');
    if (held && held === versions[0]) {
      body.push(notice('info', `Version ${held.version} was held: its cross-validated F1 is worse than the live one's. `
        + 'Use it below, or train with "Force".'));
    }
    const message = h('div');
    const rows = versions.map((v) => h('tr', { 'data-version': v.version, class: v.state },
      h('th', { scope: 'row' }, String(v.version), h('br'),
        h('time', { datetime: v.created, title: v.created, class: 'small muted' }, shortTime(v.created))),
      h('td', {}, h('span', { class: `state ${v.state}` }, v.state)),
      h('td', { class: 'num' }, v.report_count ?? '–', v.pseudo_labels
        ? h('span', { class: 'small muted', title: 'kept inputs that joined this fit by self-training' },
          ` +${v.pseudo_labels} kept`)
        : null),
      h('td', { class: 'num' }, pct(v.evaluation?.f1)),
      h('td', {}, v.state === 'live' ? null : button('Use', async () => {
        try {
          await call('use_version', { dataset: name, version: v.version });
          ctx.announce(`Version ${v.version} is live`);
          await refresh();
          versionsBox.append(notice('ok', `Version ${v.version} is live.`));
        } catch (error) {
          message.replaceChildren(notice('error', error.text));
        }
      }, { 'aria-label': `Make version ${v.version} live` }))));
    versionsBox.replaceChildren(...body, h('div', { class: 'table-wrap' }, h('table', { class: 'grid compact', id: 'versions-table' },
      h('thead', {}, h('tr', {}, ['Version', 'State', 'Reports', 'F1', ''].map((c) => h('th', { scope: 'col' }, c)))),
      h('tbody', {}, rows))), message);
  }

  await refresh();
  return () => {
    closed = true;
    clearTimeout(timer);
  };
}

function overall(info) {
  const e = info.evaluation;
  if (!e) return h('p', { class: 'muted' }, info.state === 'trained'
    ? 'Too few reports to evaluate.' : 'Not evaluated yet: report a few examples per tag, then train.');
  return h('p', { class: 'overall' }, `Whole dataset (micro-averaged): precision ${pct(e.precision)}, recall ${pct(e.recall)}`,
    e.f1 !== undefined ? `, F1 ${pct(e.f1)}` : '');
}

/** A time of today as 16:35, an older one as its date. */
export function shortTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' }) : d.toLocaleDateString();
}
