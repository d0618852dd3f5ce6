// Responsible Steering: the node search also finds the pack's nodes by their search aliases
// ("steering", "safety", "nsfw", "fair", "bias", "censor", ...).
//
// The aliases are declared in each node's schema (nodes/*_nodes.py). Where ComfyUI's schema has
// the field (upstream 0.38), /object_info carries them as `search_aliases`, which newer frontends
// search natively. Older ComfyUI (0.3.75) drops the field, so the aliases also travel in the pack's
// locale (locales/<lang>/nodeDefs.json, generated from the schemas, served at /i18n):
//   1. before the node definitions are registered, each pack node without `search_aliases` gets
//      them from the locale (English plus the user's language);
//   2. frontends whose node search ignores `search_aliases` (1.32.9 searches only name and
//      display_name) get alias matches added to the search service's results, ranked after
//      results whose name or display name contains the query and before purely fuzzy ones.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PACK_PREFIX = "RS";
const isPackNode = (def) => typeof def?.name === "string" && def.name.startsWith(PACK_PREFIX)
  && String(def.python_module ?? "").includes("responsible-steering");

function userLocale() {
  try {
    return app.extensionManager?.setting?.get?.("Comfy.Locale") || "en";
  } catch {
    return "en";
  }
}

async function localeAliases() {
  const response = await api.fetchApi("/i18n");
  if (!response.ok) return {};
  const translations = await response.json();
  const aliases = {};
  for (const lang of new Set(["en", userLocale()])) {
    for (const [name, entry] of Object.entries(translations?.[lang]?.nodeDefs ?? {})) {
      if (Array.isArray(entry?.search_aliases)) {
        aliases[name] = [...new Set([...(aliases[name] ?? []), ...entry.search_aliases])];
      }
    }
  }
  return aliases;
}

export function aliasMatches(def, query) {
  const words = query.toLocaleLowerCase().split(/\s+/).filter(Boolean);
  const aliases = (def.search_aliases ?? []).map((a) => String(a).toLocaleLowerCase());
  return words.length > 0 && aliases.length > 0
    && words.every((w) => aliases.some((a) => (w.length >= 3 ? a.includes(w) : a === w)));
}

function nodeDefStore() {
  const pinia = document.getElementById("vue-app")?.__vue_app__?.config?.globalProperties?.$pinia;
  return pinia?._s?.get("nodeDef") ?? null;
}

// Wraps NodeSearchService.prototype.searchNode where the service's fuzzy index has no
// search_aliases key; returns whether it did.
export function addAliasSearch() {
  const service = nodeDefStore()?.nodeSearchService;
  const keys = service?.nodeFuseSearch?.keys;
  if (!service || !Array.isArray(keys)) return false;
  if (keys.some((k) => (k?.name ?? k) === "search_aliases")) return false;
  const proto = Object.getPrototypeOf(service);
  if (proto.searchNode.rsAliases) return true;
  const original = proto.searchNode;
  const searchNode = function (query, filters = [], options, extra = {}) {
    const found = original.call(this, query, filters, undefined, extra);
    if (!query || !query.trim()) return options?.limit ? found.slice(0, options.limit) : found;
    const q = query.toLocaleLowerCase();
    const seen = new Set(found.map((d) => d.name));
    const wildcard = (extra?.matchWildcards ?? true) ? "*" : undefined;
    const byAlias = (this.nodeFuseSearch.data ?? []).filter((def) => !seen.has(def.name) && aliasMatches(def, query)
      && filters.every((f) => f.filterDef.matches(def, f.value, { wildcard })));
    const direct = (d) => [d.name, d.display_name].some((t) => String(t ?? "").toLocaleLowerCase().includes(q));
    const results = [...found.filter(direct), ...byAlias, ...found.filter((d) => !direct(d))];
    return options?.limit ? results.slice(0, options.limit) : results;
  };
  searchNode.rsAliases = true;
  proto.searchNode = searchNode;
  return true;
}

app.registerExtension({
  name: "responsible-steering.search-aliases",
  async addCustomNodeDefs(defs) {
    const missing = Object.values(defs).filter((def) => isPackNode(def) && !def.search_aliases?.length);
    if (!missing.length) return;
    try {
      const aliases = await localeAliases();
      for (const def of missing) if (aliases[def.name]) def.search_aliases = aliases[def.name];
    } catch (error) {
      console.warn("responsible-steering: search aliases not loaded", error);
    }
  },
  async setup() {
    addAliasSearch();
  },
});
