// A confirmation dialog: modal, focus kept inside, Escape or Cancel closes it; resolves true on Confirm.
import {h} from "./dom.js";

/**
 * confirm({title, body: [nodes], confirmLabel}) -> Promise<FormData|null>: the dialog's form data when
 * confirmed, null when cancelled. The dialog is removed from the page once closed.
 */
export function confirmDialog({title, body = [], confirmLabel = "Confirm", danger = false}) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const form = h("form", {method: "dialog", class: "dialog-form"},
      h("h2", {id: "dialog-title"}, title),
      ...body,
      h("div", {class: "dialog-buttons"},
        h("button", {type: "button", class: "button", testid: "cancel-button", value: "cancel"}, "Cancel"),
        h("button", {type: "submit", class: `button ${danger ? "button-danger" : "button-primary"}`,
          testid: "confirm-button", value: "confirm"}, confirmLabel)));
    const dialog = h("dialog", {class: "dialog", testid: "confirm-dialog", "aria-labelledby": "dialog-title"}, form);
    let result = null;
    const close = (value) => {
      result = value;
      if (dialog.open) dialog.close();
    };
    form.querySelector("[data-testid=cancel-button]").addEventListener("click", () => close(null));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      close(new FormData(form));
    });
    dialog.addEventListener("cancel", (event) => {  // Escape
      event.preventDefault();
      close(null);
    });
    dialog.addEventListener("keydown", (event) => {  // keep Tab inside the dialog
      if (event.key !== "Tab") return;
      const focusable = [...dialog.querySelectorAll("button, select, input, textarea, a[href]")]
        .filter((el) => !el.disabled);
      if (!focusable.length) return;
      const first = focusable[0];
      const last = focusable[focusable.length - 1];
      if (event.shiftKey && document.activeElement === first) {
        event.preventDefault();
        last.focus();
      } else if (!event.shiftKey && document.activeElement === last) {
        event.preventDefault();
        first.focus();
      }
    });
    dialog.addEventListener("close", () => {
      dialog.remove();
      if (opener && opener.isConnected) opener.focus();
      resolve(result);
    });
    document.body.append(dialog);
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
    (form.querySelector("select, input") || form.querySelector("[data-testid=cancel-button]")).focus();
  });
}
