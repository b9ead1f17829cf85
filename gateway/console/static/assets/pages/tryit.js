import { call, upload } from '../api.js';
import { h, field, notice, user, button, dropZone } from '../dom.js';
import { datasetOr, pageHead, tagChips } from './common.js';

export async function render(root, [name], ctx) {
  const ds = await datasetOr(root, name);
  if (!ds) return null;
  const urls = [];
  const local = (file) => {
    const url = URL.createObjectURL(file);
    urls.push(url);
    return url;
  };
  const sections = [];
  if (ds.kind !== 'image') sections.push(textSection(name, ds.kind === 'text'));
  if (ds.kind !== 'text') sections.push(imageSection(name, local), videoSection(name, local, ctx));
  root.append(pageHead('Try it', ds, ds.info.state !== 'trained'
    ? notice('info', `This dataset is ${ds.info.state}: answers come from its last trained head, if any.`) : null),
  h('div', { class: 'try-grid' }, sections));
  return () => urls.forEach((u) => URL.revokeObjectURL(u));
}

function textSection(name, alone) {
  const [textField, text] = field('Texts, one per line', h('textarea', { rows: 5, dir: 'auto', id: 'try-text' }));
  const out = h('div', { 'aria-live': 'polite', id: 'try-text-out' });
  return h('section', { class: alone ? 'card span2' : 'card', 'aria-labelledby': 'try-text-h' },
    h('h2', { id: 'try-text-h' }, 'Text'), textField,
    button('Tag texts', async () => {
      const contents = text.value.split('\n').map((t) => t.trim()).filter(Boolean);
      if (!contents.length) {
        out.replaceChildren(notice('error', 'Type at least one text.'));
        return;
      }
      try {
        const answer = await call('tag_texts', { dataset: name, contents });
        out.replaceChildren(h('ul', { class: 'results' }, answer.map((r) => h('li', {},
          user(r.content, 'p', { class: 'text-item' }), tagChips(r.tags)))));
      } catch (error) {
        out.replaceChildren(notice('error', error.text));
      }
    }, { class: 'primary' }), out);
}

function imageSection(name, local) {
  const out = h('div', { 'aria-live': 'polite', id: 'try-image-out' });
  return h('section', { class: 'card', 'aria-labelledby': 'try-image-h' },
    h('h2', { id: 'try-image-h' }, 'Images'),
    dropZone('Images to tag', 'image/*', async (files) => {
      out.replaceChildren(h('p', { class: 'muted' }, 'Tagging…'));
      try {
        const answer = await upload('tag_images', [['dataset', name], ...files.map((f) => ['image_file', f])]);
        out.replaceChildren(h('ul', { class: 'results images' }, answer.map((r, i) => h('li', { class: 'result' },
          h('img', { src: local(files[i]), alt: r.image_file || files[i].name, class: 'thumb' }),
          h('div', {}, user(r.image_file || files[i].name, 'p', { class: 'small muted' }),
            r.error ? notice('error', r.error) : tagChips(r.tags))))));
      } catch (error) {
        out.replaceChildren(notice('error', error.text));
      }
    }), out);
}

function seconds(time) {
  return time.split(':').reduce((acc, part) => acc * 60 + Number(part), 0);
}

function videoSection(name, local, ctx) {
  const [everyField, every] = field('Sample every (ms)', h('input', { type: 'number', min: 1, value: 500, step: 100 }));
  const [diffField, diff] = field('Minimum frame difference (0–255)', h('input', { type: 'number', min: 0, max: 255, value: 0 }));
  const out = h('div', { 'aria-live': 'polite', id: 'try-video-out' });
  return h('section', { class: 'card span2', 'aria-labelledby': 'try-video-h' },
    h('h2', { id: 'try-video-h' }, 'Video'),
    h('div', { class: 'row' }, everyField, diffField),
    dropZone('A video to tag', 'video/*', async ([file]) => {
      out.replaceChildren(h('p', { class: 'muted' }, `Analysing ${file.name}…`));
      let answer;
      try {
        answer = await upload('tag_video_frames', [['dataset', name], ['every_ms', every.value || 500],
          ['min_frame_diff', diff.value || 0], ['video_file', file]]);
      } catch (error) {
        out.replaceChildren(notice('error', error.text));
        return;
      }
      const [result] = answer;
      if (result.error) {
        out.replaceChildren(notice('error', result.error));
        return;
      }
      ctx.announce(`${result.frames.length} frames returned`);
      out.replaceChildren(await timeline(local(file), result.frames));
    }, { multiple: false }), out);
}

/** The returned frames as a strip: a picture of each (drawn from the local file) and its tags. */
async function timeline(src, frames) {
  const strip = h('ol', { class: 'timeline', id: 'timeline', 'aria-label': 'Frames whose tags changed' });
  const video = h('video', { muted: true, preload: 'auto', playsinline: true });
  video.src = src;
  const ready = await new Promise((resolve) => {
    video.addEventListener('loadeddata', () => resolve(true), { once: true });
    video.addEventListener('error', () => resolve(false), { once: true });
    setTimeout(() => resolve(false), 5000);
  });
  for (const frame of frames) {
    const canvas = h('canvas', { width: 160, height: 90, class: 'frame', 'aria-hidden': 'true' });
    if (ready) await draw(video, canvas, seconds(frame.time));
    strip.append(h('li', { class: 'frame-cell' }, canvas,
      h('p', { class: 'small' }, h('time', {}, frame.time), ` · frame ${frame.frame}`), tagChips(frame.tags)));
  }
  video.removeAttribute('src');
  return h('div', {}, strip, ready ? null : h('p', { class: 'muted small' }, 'This browser cannot play the file: frames are listed without pictures.'));
}

async function draw(video, canvas, at) {
  await new Promise((resolve) => {
    const done = () => resolve();
    video.addEventListener('seeked', done, { once: true });
    setTimeout(done, 2000);
    video.currentTime = Math.min(at, Math.max(0, (video.duration || at) - 0.05));
  });
  const ctx2d = canvas.getContext('2d');
  const ratio = video.videoWidth / video.videoHeight || 16 / 9;
  canvas.height = Math.round(canvas.width / ratio);
  ctx2d.drawImage(video, 0, 0, canvas.width, canvas.height);
}
