import { call, session } from '../api.js';
import { h, field, notice } from '../dom.js';

export async function render(root, _params, ctx) {
  const [tokenField, input] = field('API token', h('input', {
    type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true,
  }), 'Made by an operator (kashf-admin create-token; make up prints one). Kept in this browser tab only.');
  const message = h('div');
  const form = h('form', { class: 'card narrow', novalidate: true },
    h('h1', {}, 'Sign in to Kashf'),
    tokenField,
    h('button', { type: 'submit', class: 'primary' }, 'Sign in'),
    message);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    message.replaceChildren();
    if (!token) {
      message.append(notice('error', 'Enter a token.'));
      input.focus();
      return;
    }
    session.signIn(token);
    try {
      await call('list_datasets', {});
    } catch (error) {
      session.signOut();
      message.append(notice('error', error.status === 401 ? 'That token was refused.' : error.text));
      input.select();
      return;
    }
    input.value = '';
    ctx.signedIn();
  });
  root.append(form);
  input.focus();
}
