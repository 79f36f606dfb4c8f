() => {
  // Ctrl+Enter (Cmd+Enter on a Mac) generates, as in A1111, from anywhere on the txt2img tab.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey) || event.repeat) return;
    const generate = document.querySelector("#generate");
    if (!generate || generate.offsetParent === null || generate.disabled) return;  // another tab is shown
    event.preventDefault();
    generate.click();
  }, true);

  // Gradio's slider clamps its number box into the slider's range when the box loses focus, so steps 0 would
  // silently become 1. For the form's sliders (class hg-unclamped) the typed value stays, and the engine's
  // check refuses it with a message naming the field. Stopping the blur while it is captured here keeps it
  // from reaching the slider's own listener.
  document.addEventListener("blur", (event) => {
    const box = event.target;
    if (box instanceof HTMLInputElement && box.type === "number" && box.closest(".hg-unclamped")) {
      event.stopPropagation();
    }
  }, true);
}
