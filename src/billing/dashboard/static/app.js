// The dashboard's own script: the copy button of a new API key.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var text = document.getElementById(button.dataset.copy).textContent.trim();
  navigator.clipboard.writeText(text).then(function () { button.textContent = "Copiada!"; });
});
