// Responsible Steering: the node search also finds the pack's nodes by their search aliases
// ("steering", "safety", "nsfw", "fair", "bias", "censor", ...).
//
// The aliases are declared in each node's schema (nodes/*_nodes.py). Where ComfyUI's schema has
// the field (upstream 0.38), /object_info carries them as `search_aliases`, which newer frontends
// search natively. Older ComfyUI (0.3.75) drops the field, so the aliases also travel in the pack's
// locale (locales/<lang>/nodeDefs.json, generated from the schemas, served at /i18n):
//   1. before the node definitions are registered, each node without `search_aliases` whose locale
//      entry has them gets them (English plus the user's language; whatever folder name the pack
//      was installed under);
//   2. frontends whose node search ignores `search_aliases` (1.32.9 searches only name and
//      display_name) get alias matches added to the search service's results, ranked after
//      results whose name or display name contains the query and before purely fuzzy ones.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

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
    const limited = (results) => (options?.limit ? results.slice(0, options.limit) : results);
    if (!query || !query.trim()) return limited(found);
    const q = query.toLocaleLowerCase();
    const seen = new Set(found.map((d) => d.name));
    const wildcard = (extra?.matchWildcards ?? true) ? "*" : undefined;
    const byAlias = (this.nodeFuseSearch.data ?? []).filter((def) => !seen.has(def.name) && aliasMatches(def, query)
      && filters.every((f) => f.filterDef.matches(def, f.value, { wildcard })));
    if (!byAlias.length) return limited(found);  // other searches keep the frontend's own order
    const direct = (d) => [d.name, d.display_name].some((t) => String(t ?? "").toLocaleLowerCase().includes(q));
    const results = [...found.filter(direct), ...byAlias, ...found.filter((d) => !direct(d))];
    return limited(results);
  };
  searchNode.rsAliases = true;
  proto.searchNode = searchNode;
  return true;
}

app.registerExtension({
  name: "responsible-steering.search-aliases",
  async addCustomNodeDefs(defs) {
    try {
      const aliases = await localeAliases();
      for (const [name, words] of Object.entries(aliases)) {
        if (defs[name] && !defs[name].search_aliases?.length) defs[name].search_aliases = words;
      }
    } catch (error) {
      console.warn("responsible-steering: search aliases not loaded", error);
    }
  },
  async setup() {
    addAliasSearch();
  },
});
