#!/usr/bin/env python3
"""Generate conf/pricing.json from LiteLLM's model_prices_and_context_window.json.

Usage: scripts/gen-pricing.py SOURCE_JSON [OUTPUT_JSON]

SOURCE_JSON is a copy of LiteLLM's model_prices_and_context_window.json. Default
OUTPUT_JSON = conf/pricing.json next to this script's parent directory.

Output format (read by src/usage/pricing.rs), prices in USD per token:
  {"_source": "...", "models": {"<name>": {"input": .., "output": .., "cache_read": ..,
   "cache_write_5m": .., "cache_write_1h": .., "input_above_200k": .., ...}}}
Absent prices are omitted. A long-context tier is written as `<kind>_above_<N>k` where N is
LiteLLM's threshold in thousands of prompt tokens (200 for Claude and Gemini, 272 for GPT-5.x,
100 or 128 for a few models); a model carries at most one threshold.

What Anthropic's usage object reports beside tokens, for Claude entries only (the relay reads it
from Anthropic's usage alone):
  fast_multiplier    LiteLLM's `provider_specific_entry.fast` (fast mode, `usage.speed: "fast"`)
  geo_us_multiplier  LiteLLM's `provider_specific_entry.us` (`usage.inference_geo: "us"`)
  web_search         USD per web search: LiteLLM's `search_context_cost_per_query` when it is one
                     price for every context size (Anthropic bills a search flat)

Kept: chat models (and, for OpenAI/Azure, `responses`-mode models such as the Codex ones) of the
providers anthropic, openai, gemini, azure (entries priced exactly like the OpenAI model of the
same name are dropped), Anthropic models on bedrock / bedrock_converse, and vertex_ai Anthropic
models. Batch, flex, priority and other service-tier prices are not kept: the relay prices the
standard tier.

Two repairs. First, LiteLLM lists the long-context (>200k prompt tokens) prices of some Claude models only
under their Vertex AI / Bedrock names (e.g. `vertex_ai/claude-sonnet-4-5`) and not under the
first-party name (`claude-sonnet-4-5`), although Anthropic charges the same tier. A first-party
`anthropic` entry without a tier copies the tier of its Vertex AI (else Bedrock) twin when every
base price of the two is identical. The generator reports each copy on stderr.

Second, Anthropic bills web search at one price for every model that can search ($10 per 1,000
searches, "plus standard token costs"), but LiteLLM gives `search_context_cost_per_query` to only
some first-party Claude entries. A first-party `anthropic` Claude entry without it takes the one
price every other first-party Claude entry carries, when they all agree (reported on stderr and
in `_source`).

Standard library only; the output is deterministic (sorted, one model per line).
"""

import hashlib
import json
import os
import re
import sys


# LiteLLM field -> our field (base tier).
BASE_FIELDS = {
    "input_cost_per_token": "input",
    "output_cost_per_token": "output",
    "cache_read_input_token_cost": "cache_read",
    "cache_creation_input_token_cost": "cache_write_5m",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h",
}

# `<litellm base field>_above_<N>k_tokens` -> `<our field>_above_<N>k`.
TIER_RE = re.compile(r"^(?P<base>.+)_above_(?P<k>\d+)k_tokens$")

PLAIN_PROVIDERS = {"anthropic", "openai", "gemini", "azure"}
BEDROCK_PROVIDERS = {"bedrock", "bedrock_converse"}
VERTEX_ANTHROPIC = "vertex_ai-anthropic_models"


def wanted(name, entry):
    provider = entry.get("litellm_provider")
    mode = entry.get("mode")
    if provider in ("openai", "azure"):
        return mode in ("chat", "responses")
    if mode != "chat":
        return False
    if provider in PLAIN_PROVIDERS:
        return True
    if provider in BEDROCK_PROVIDERS:
        lowered = name.lower()
        return "anthropic." in lowered or "claude" in lowered
    return provider == VERTEX_ANTHROPIC


def is_claude(name, entry):
    provider = entry.get("litellm_provider")
    return provider == "anthropic" or provider == VERTEX_ANTHROPIC or (
        provider in BEDROCK_PROVIDERS and ("anthropic." in name.lower() or "claude" in name.lower()))


def flat_search_price(entry):
    """USD per web search when LiteLLM prices every search context size alike, else None."""
    per_query = entry.get("search_context_cost_per_query")
    if not isinstance(per_query, dict):
        return None
    values = {v for v in per_query.values() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return values.pop() if len(values) == 1 else None


def extras_of(name, entry):
    """The fast-mode and US-inference multipliers and the web-search price of a Claude entry."""
    out = {}
    if not is_claude(name, entry):
        return out
    specific = entry.get("provider_specific_entry")
    if isinstance(specific, dict):
        for key, field in (("fast", "fast_multiplier"), ("us", "geo_us_multiplier")):
            value = specific.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[field] = value
    search = flat_search_price(entry)
    if search is not None:
        out["web_search"] = search
    return out


def price_of(name, entry):
    """Our price record for one LiteLLM entry, or None when it has no usable token prices."""
    out = {}
    thresholds = set()
    for field, value in entry.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if field in BASE_FIELDS:
            out[BASE_FIELDS[field]] = value
            continue
        m = TIER_RE.match(field)
        if m and m.group("base") in BASE_FIELDS:
            thresholds.add(int(m.group("k")))
            out["%s_above_%sk" % (BASE_FIELDS[m.group("base")], m.group("k"))] = value
    if "input" not in out or "output" not in out:
        return None
    out.update(extras_of(name, entry))
    if len(thresholds) > 1:
        sys.exit("%s: more than one long-context threshold: %s" % (name, sorted(thresholds)))
    for field, value in out.items():
        if value < 0:
            sys.exit("%s: negative price %s=%r" % (name, field, value))
    return out


DATED_RE = re.compile(r"^(?P<base>.+)-(?P<date>\d{8})$")


def twins(name):
    """Names under which Vertex AI and Bedrock list the first-party model `name`."""
    out = ["vertex_ai/" + name]
    m = DATED_RE.match(name)
    if m:
        out.append("vertex_ai/%s@%s" % (m.group("base"), m.group("date")))
    out += ["anthropic.%s-v1:0" % name, "anthropic.%s-v2:0" % name]
    return out


EXTRA_FIELDS = ("fast_multiplier", "geo_us_multiplier", "web_search")


def has_tier(price):
    return any("_above_" in k for k in price)


def token_prices(price):
    """The base token prices of a record (no tier, no extras)."""
    return {k: v for k, v in price.items() if "_above_" not in k and k not in EXTRA_FIELDS}


def inherit_long_context(table, models):
    inherited = []
    for name, price in models.items():
        entry = table.get(name)
        if entry.get("litellm_provider") != "anthropic" or has_tier(price):
            continue
        for twin in twins(name):
            twin_entry = table.get(twin)
            if not isinstance(twin_entry, dict):
                continue
            twin_price = price_of(twin, twin_entry)
            if twin_price is None or not has_tier(twin_price):
                continue
            if token_prices(twin_price) != token_prices(price):
                continue
            price.update({k: v for k, v in twin_price.items() if "_above_" in k and k not in price})
            inherited.append((name, twin))
            sys.stderr.write("%s: long-context tier copied from %s\n" % (name, twin))
            break
    return inherited


def fill_web_search(table, models):
    """First-party Claude entries without a search price take the one the others agree on."""
    first_party = [n for n in models if table[n].get("litellm_provider") == "anthropic"]
    prices = {models[n]["web_search"] for n in first_party if "web_search" in models[n]}
    if len(prices) != 1:
        return []
    price = prices.pop()
    filled = []
    for name in sorted(first_party):
        if "web_search" not in models[name] and "claude" in name.lower():
            models[name]["web_search"] = price
            filled.append(name)
    if filled:
        sys.stderr.write("web search price %r given to: %s\n" % (price, ", ".join(filled)))
    return filled


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    if len(sys.argv) < 2:
        sys.exit("usage: scripts/gen-pricing.py SOURCE_JSON [OUTPUT_JSON]")
    source = sys.argv[1]
    output = sys.argv[2] if len(sys.argv) > 2 else os.path.normpath(
        os.path.join(here, "..", "conf", "pricing.json"))

    with open(source, "rb") as f:
        raw = f.read()
    table = json.loads(raw)

    models = {}
    azure = {}
    for name, entry in table.items():
        if name == "sample_spec" or not isinstance(entry, dict) or not wanted(name, entry):
            continue
        price = price_of(name, entry)
        if price is None:
            continue
        if entry.get("litellm_provider") == "azure":
            azure[name] = price
        else:
            models[name] = price

    inherited = inherit_long_context(table, models)
    searches = fill_web_search(table, models)

    # Azure lists most OpenAI models again as `azure/<name>`; lookup strips the `azure/` prefix,
    # so an identical copy only adds size. Region variants (`azure/eu/...`) differ and are kept.
    dropped = 0
    for name, price in azure.items():
        bare = name[len("azure/"):] if name.startswith("azure/") else name
        if models.get(bare) == price:
            dropped += 1
            continue
        models[name] = price

    digest = hashlib.sha256(raw).hexdigest()[:16]
    lines = ["{", '"_source":%s,' % json.dumps(
        "LiteLLM model_prices_and_context_window.json sha256:%s; USD per token; "
        "generated by scripts/gen-pricing.py; long-context tier copied from a twin for: %s; "
        "web search price filled in for: %s"
        % (digest, ", ".join(sorted(n for n, _ in inherited)) or "none",
           ", ".join(searches) or "none")), '"models":{']
    names = sorted(models)
    for i, name in enumerate(names):
        sep = "," if i + 1 < len(names) else ""
        lines.append("%s:%s%s" % (json.dumps(name), json.dumps(models[name], sort_keys=True,
                                                              separators=(",", ":")), sep))
    lines.append("}}")
    text = "\n".join(lines) + "\n"
    json.loads(text)  # self-check

    with open(output, "w", encoding="utf-8") as f:
        f.write(text)
    sys.stderr.write("wrote %s: %d models (%d identical azure copies dropped), %d bytes\n"
                     % (output, len(models), dropped, len(text.encode("utf-8"))))


if __name__ == "__main__":
    main()
