// The rollout page's live board: server-sent events carry HTML the
// coordinator rendered; nothing here polls.
'use strict';
(function () {
  const board = document.getElementById('board');
  if (!board || !board.dataset.live) return;
  const live = document.getElementById('live');
  const events = document.getElementById('events');
  const setLive = (state, text) => { if (live) { live.dataset.state = state; live.textContent = text; } };
  const es = new EventSource(board.dataset.live);
  es.onopen = () => setLive('open', 'live');
  es.onerror = () => setLive('reconnecting', 'reconnecting…');
  es.addEventListener('board', (e) => { board.innerHTML = e.data; });
  es.addEventListener('event', (e) => {
    events.insertAdjacentHTML('afterbegin', e.data);
    while (events.children.length > 200) events.lastElementChild.remove();
  });
  es.addEventListener('fatal', (e) => { es.close(); setLive('closed', 'stopped: ' + e.data); });
})();
