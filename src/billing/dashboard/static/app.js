// The dashboard's own script: the copy button of a new API key.
document.addEventListener("click", function (event) {
  var button = event.target.closest("[data-copy]");
  if (!button) return;
  var text = document.getElementById(button.dataset.copy).textContent.trim();
  navigator.clipboard.writeText(text).then(function () { button.textContent = "Copiada!"; });
});

// Phones: tables of class "stack" show each row as a card; label each cell with its column's header
// (the contacts table writes its data-label itself).
function labelStackedCells(root) {
  for (const table of root.querySelectorAll("table.stack")) {
    const heads = [...table.querySelectorAll("thead th")].map((th) => th.textContent.trim());
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.children].forEach((cell, i) => {
        if (!cell.hasAttribute("data-label") && heads[i]) cell.setAttribute("data-label", heads[i]);
      });
    }
  }
}
document.addEventListener("DOMContentLoaded", () => labelStackedCells(document));
document.addEventListener("htmx:afterSwap", (event) => labelStackedCells(event.target));

// New campaign: the template list offers only the templates of the chosen type.
function filterTemplates() {
  const type = document.getElementById("template_type");
  const choice = document.getElementById("template_id");
  if (!type || !choice) return;
  for (const group of choice.querySelectorAll("optgroup")) {
    const match = [...group.querySelectorAll("option")].some((o) => o.dataset.type === type.value);
    group.hidden = !match;
    group.disabled = !match;
  }
  const picked = choice.selectedOptions[0];
  if (picked && picked.dataset.type && picked.dataset.type !== type.value) choice.value = "";
}
document.addEventListener("DOMContentLoaded", filterTemplates);
document.addEventListener("change", (event) => {
  if (event.target.id === "template_type") filterTemplates();
});
