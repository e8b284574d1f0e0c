// The reply box: Ctrl+Enter (Cmd+Enter on a Mac) sends, as in mail and chat apps. A file, not an
// inline script: the pages' CSP (default-src 'self') runs no inline script.
document.addEventListener("keydown", function (event) {
  var box = event.target;
  if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || !box.form || box.id !== "reply-text") {
    return;
  }
  event.preventDefault();
  if (box.form.reportValidity()) {
    box.form.requestSubmit();
  }
});
