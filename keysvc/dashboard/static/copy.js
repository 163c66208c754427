// The Copy button of the page that shows a new key once: copies the key to the clipboard.
// Served as a file, since the Content-Security-Policy allows no inline script.
"use strict";

function selectText(element) {
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    const status = button.parentElement.querySelector(".copied");
    const say = (text) => { if (status) { status.textContent = text; } };
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(source.textContent.trim());
        say("Copied");
      } catch (error) {
        // No clipboard access (an insecure origin, a refused permission): select the key
        // so that Ctrl+C / Cmd+C copies it.
        selectText(source);
        say("Selected: press Ctrl+C to copy");
      }
    });
  }
});
