/* Inside the inquiry page: tell the page that frames us how tall we are, so its iframe can fit
   (the embed snippet, embed.js, listens). The message is {type: "inquiry-form:height", height}
   in CSS pixels, sent on load and whenever the page's height changes. No data of the guest's. */
(function () {
  if (window.parent === window) return;
  var last = 0;
  function send() {
    var height = Math.ceil(document.documentElement.scrollHeight);
    if (height === last) return;
    last = height;
    window.parent.postMessage({ type: "inquiry-form:height", height: height }, "*");
  }
  if (window.ResizeObserver) new ResizeObserver(send).observe(document.documentElement);
  window.addEventListener("load", send);
  send();
})();
