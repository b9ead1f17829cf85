// DOM helpers. Every string becomes a text node or an attribute value: nothing here parses HTML, so a tag
// title or a reported text can never become markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function fill(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.setAttribute('class', value);
    else if (key === 'props') Object.assign(el, value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h('p', {class: 'x'}, 'text', h('b', {}, 'bold')) */
export function h(tag, attrs = {}, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function s(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** User content (a text, a title): its own direction, so Persian reads right to left. */
export function user(text, tag = 'span', attrs = {}) {
  return h(tag, { dir: 'auto', class: 'user', ...attrs }, text);
}

let uid = 0;
export function newId(prefix) {
  uid += 1;
  return `${prefix}-${uid}`;
}

/** A labelled form control: returns [wrapper, control]. */
export function field(label, control, hint) {
  control.id = control.id || newId('f');
  const parts = [h('label', { for: control.id }, label), control];
  if (hint) {
    const hintEl = h('small', { id: newId('hint'), class: 'hint' }, hint);
    control.setAttribute('aria-describedby', hintEl.id);
    parts.push(hintEl);
  }
  return [h('div', { class: 'field' }, parts), control];
}

/** A message box in the page (role=alert for errors); kind: info | error | ok. */
export function notice(kind, ...text) {
  return h('div', { class: `notice ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, ...text);
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

export function pct(value) {
  return value === null || value === undefined ? '–' : `${Number(value).toFixed(1)}%`;
}

export function prob(value) {
  return Number(value).toFixed(2);
}

/** A button that disables itself while its async action runs. */
export function button(label, action, attrs = {}) {
  const el = h('button', { type: 'button', ...attrs }, label);
  el.addEventListener('click', async (event) => {
    if (el.disabled) return;
    el.disabled = true;
    el.setAttribute('aria-busy', 'true');
    try {
      await action(event);
    } finally {
      el.disabled = false;
      el.removeAttribute('aria-busy');
    }
  });
  return el;
}

/** A drop zone around a file input: dropping files or choosing them both call onFiles(FileList). */
export function dropZone(label, accept, onFiles, { multiple = true } = {}) {
  const input = h('input', { type: 'file', accept, class: 'file-input' });
  input.multiple = multiple;
  input.id = newId('drop');
  const zone = h('div', { class: 'drop' },
    h('label', { for: input.id }, h('span', { class: 'drop-title' }, label),
      h('span', { class: 'hint' }, 'Drop files here, or press Enter / click to choose')),
    input);
  input.addEventListener('change', () => {
    if (input.files && input.files.length) onFiles([...input.files]);
    input.value = '';
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    const files = [...(event.dataTransfer?.files || [])].filter((f) => !accept || matches(f, accept));
    if (files.length) onFiles(files);
  });
  return zone;
}

function matches(file, accept) {
  return accept.split(',').some((rule) => {
    const r = rule.trim();
    return r.endsWith('/*') ? file.type.startsWith(r.slice(0, -1)) : file.type === r || file.name.endsWith(r);
  });
}
