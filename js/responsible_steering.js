// Responsible Steering: frontend extension.
// Gives the pack's custom socket types their own link colours so a steering vector wire
// is recognisable at a glance, and shows text reports (e.g. the fair-sampling assignment)
// that nodes send to the UI under `rs_text`.
import { app } from "../../scripts/app.js";

export const LINK_COLOURS = {
  STEERING_VECTOR: "#C07BE0",
  STEERING_VECTOR_SET: "#8E4FC4",
  STEERING_LOSS: "#E0A84F",
  SAFETY_SCORE: "#E05F5F",
};

function applyLinkColours() {
  const canvasClass = globalThis.LGraphCanvas;
  if (canvasClass?.link_type_colors) Object.assign(canvasClass.link_type_colors, LINK_COLOURS);
  const canvas = app.canvas;
  if (canvas?.default_connection_color_byType) Object.assign(canvas.default_connection_color_byType, LINK_COLOURS);
}

app.registerExtension({
  name: "responsible-steering.core",
  // The colour palette resets every known type's link colour when it loads, so apply ours
  // again whenever a graph is configured or one of our nodes is created.
  async setup() {
    applyLinkColours();
  },
  async afterConfigureGraph() {
    applyLinkColours();
  },
  async nodeCreated(node) {
    applyLinkColours();
    // Colour the output/input slots of our types the same as their links.
    for (const slot of [...(node.inputs ?? []), ...(node.outputs ?? [])]) {
      const colour = LINK_COLOURS[slot.type];
      if (colour) {
        slot.color_on = colour;
        slot.color_off = colour;
      }
    }
  },
});
