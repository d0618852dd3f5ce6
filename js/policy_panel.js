// Responsible Steering: the server's safety policy, as a sidebar tab.
// Everyone sees whether a policy is active and what it enforces, and why an image of theirs was
// censored (the policy guard's per-image records arrive with the "executed" message). An operator
// (who holds the token whose sha256 the policy names) also sees the whole policy and the latest
// audit records. Everything from the server is inserted as text, never as HTML.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTE = "/responsible_steering/policy";
const TOKEN_KEY = "responsible-steering.operator-token";
const RECORD_KEY = "responsible_steering";
const censored = [];   // this browser's censored images, newest first
let panel = null;

function el(tag, text, style) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (style) node.style.cssText = style;
  return node;
}

async function fetchPolicy() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  try {
    const response = await api.fetchApi(ROUTE, { headers: token ? { "X-RS-Operator-Token": token } : {} });
    return response.ok ? await response.json() : { active: false };
  } catch (error) {
    return { active: false, unreachable: String(error) };
  }
}

function describe(policy) {
  const lines = [];
  if (policy.input) {
    const how = policy.input.detector === "nearest_neighbour" ? "by the nearest-neighbour prompt detector"
      : `against ${policy.input.words} listed words`;
    lines.push(`Prompts: every text sent to a text encoder is checked ${how}; when flagged: ${policy.input.action}.`);
  }
  if (policy.output) {
    lines.push(`Images: every image is scored where it is made and again where it leaves the server (${policy.output.scores.join(", ")}, on the whole image and on local windows); flagged images are censored (${policy.output.censor}), each on its own.`);
    const allowed = policy.output.allow_uninspected || [];
    lines.push(allowed.length ? `Outputs the policy cannot inspect (latents, masks, tensors as text) are allowed only for: ${allowed.join(", ")}.`
      : "Outputs the policy cannot inspect (latents, masks, tensors as text) are refused.");
  }
  if (policy.steering) lines.push(`Steering: every sampler's prompt is steered by the operator's embedding direction (${policy.steering.join(", ")}).`);
  if (policy.previews) lines.push(policy.previews.mode === "suppress" ? "Live previews: not sent." :
    `Live previews: every frame is scored; flagged frames are ${policy.previews.flagged === "blur" ? "blurred" : "not sent"}; none for prompts whose text was flagged.`);
  return lines;
}

function scoresText(record) {
  return Object.entries(record.scores || {}).map(([name, value]) =>
    `${name} ${Number(value).toFixed(3)} > ${record.thresholds?.[name]}`).join(", ");
}

async function render(root) {
  root.replaceChildren();
  root.style.cssText = "padding: 10px; overflow: auto; height: 100%; font-size: 13px; line-height: 1.4;";
  const policy = await fetchPolicy();
  root.append(el("h3", "Server safety policy", "margin: 0 0 8px 0;"));
  if (policy.error) {
    root.append(el("p", `The policy cannot be enforced: ${policy.error}`, "color: #e05f5f;"));
    return;
  }
  if (!policy.active) {
    root.append(el("p", "No safety policy is active on this server."));
    return;
  }
  root.append(el("p", `Active: ${policy.name} (version ${String(policy.sha256).slice(0, 12)})`, "font-weight: bold;"));
  for (const line of describe(policy)) root.append(el("p", line, "margin: 4px 0;"));

  root.append(el("h4", "Your censored images", "margin: 12px 0 4px 0;"));
  if (!censored.length) root.append(el("p", "None in this session.", "opacity: 0.7;"));
  for (const record of censored.slice(0, 20)) {
    root.append(el("p", `${record.class_type} ${record.output_node}, image ${record.index}: ${record.flagged ? record.action : "censored where it was made"} - ${scoresText(record)}`,
      "margin: 2px 0;"));
  }

  root.append(el("h4", "Operator", "margin: 12px 0 4px 0;"));
  const token = el("input", undefined, "width: 70%;");
  token.type = "password";
  token.placeholder = "operator token";
  const button = el("button", policy.operator ? "Sign out" : "Show policy and audit");
  button.onclick = () => {
    if (policy.operator) sessionStorage.removeItem(TOKEN_KEY);
    else if (token.value) sessionStorage.setItem(TOKEN_KEY, token.value);
    render(root);
  };
  if (!policy.operator) root.append(token);
  root.append(button);
  if (!policy.operator) return;
  root.append(el("p", `Policy file: ${policy.path}; audit log: ${policy.audit_path}; previews scored: ${policy.previews?.scored ?? 0}, withheld: ${policy.previews?.dropped ?? 0}`));
  root.append(el("pre", JSON.stringify(policy.document, null, 2), "white-space: pre-wrap; font-size: 11px;"));
  root.append(el("h4", "Latest audit records", "margin: 12px 0 4px 0;"));
  for (const record of [...policy.recent].reverse()) {
    const what = record.type === "prompt"
      ? `prompt ${record.outcome}; matched: ${(record.input?.matched || []).join(", ") || "none"}${record.reason ? `; ${record.reason}` : ""}`
      : record.type === "image" ? `made by ${record.class_type} ${record.node}, image ${record.index}: ${record.action} (${scoresText(record)})`
      : record.type === "release" ? `released by ${record.class_type} ${record.output_node}, image ${record.index}: ${record.action} (${scoresText(record)})`
      : `${record.type} ${record.class_type ?? ""} ${record.node ?? ""}`;
    root.append(el("p", `${record.time} ${String(record.prompt_id).slice(0, 8)} client ${record.client_id ?? "-"}: ${what}`,
      "margin: 2px 0; font-family: monospace; font-size: 11px;"));
  }
}

app.registerExtension({
  name: "responsible-steering.policy",
  async setup() {
    api.addEventListener("executed", ({ detail }) => {
      const records = detail?.output?.[RECORD_KEY];
      if (!Array.isArray(records)) return;
      const flagged = records.filter((r) => r.flagged || (r.upstream || []).some((u) => u.flagged.some(Boolean)));
      if (!flagged.length) return;
      censored.unshift(...flagged);
      censored.splice(100);
      const summary = `${flagged.length} image(s) censored by the server's safety policy`;
      const detailText = flagged.map((r) => `image ${r.index}: ${scoresText(r)}`).join("; ");
      if (app.extensionManager?.toast?.add) {
        app.extensionManager.toast.add({ severity: "warn", summary, detail: detailText, life: 8000 });
      } else {
        console.warn(`[responsible-steering] ${summary}: ${detailText}`);
      }
      if (panel) render(panel);
    });
    app.extensionManager?.registerSidebarTab?.({
      id: "responsible-steering-policy",
      icon: "pi pi-shield",
      title: "Safety policy",
      tooltip: "The server's safety policy",
      type: "custom",
      render: (root) => {
        panel = root;
        render(root);
      },
    });
  },
});
