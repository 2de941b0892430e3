"""Build the company-name -> ticker maps that ship in the package (``inference.ticker_names=[...]``).

    python scripts/build_ticker_maps.py [--data ../shared/data]

- ``us_stocknet``: the 86 US-listed companies of StockNet (``company`` column, MIT), each under its full
  name and the name without legal suffixes ("The Coca-Cola Company" -> "Coca-Cola").
- ``india_sentfin``: the companies of SEntFiN's entity table (``entities.parquet``, MIT; NSE symbols) under
  every alias the table gives. Rows that are sectors or themes ("PHARMA", "BASEMETALS": no alias with a
  legal suffix such as Ltd.) and exchanges/indices (``NOT_COMPANIES``) are left out, and so is every alias
  that mostly matches something else in SEntFiN's train and validation headlines (at least 3 matches,
  under half of them in headlines whose annotated entities include that company: "Deepak" is a first
  name far more often than Deepak Fertilisers, "CBI" the police far more often than Central Bank of
  India). The test headlines are kept for the measurement (scripts/bench_ticker_names.py).

Every name goes through one filter (``MAP_VERSION`` in the output): at least 3 characters, a capital
letter, not a common word of financial headlines (``COMMON_WORDS``: names that were matched as ordinary
words in the check of docs/experiments/tickers.md). Writes ``newsimpact/ticker_maps/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAP_VERSION = 2
NOT_COMPANIES = {"STOCKEXCHNG"}  # NSE, NCDEX, Sensex, Nifty: exchanges and indices, not listed companies
_SUFFIX = re.compile(
    r"(,?\s+(Inc\.?|Incorporated|Corporation|Corp\.?|Company|Co\.|& Co\.?|Ltd\.?|Limited|plc|PLC|p\.l\.c\.|"
    r"AG|S\.A\.|N\.V\.|SA/NV|L\.P\.|Holdings?|Group))+$"
)
_LEGAL = re.compile(r"\b(Ltd|Limited|Corp|Corporation|Inc|Co|Company|plc|PLC)\.?$")
# Names that are also everyday words of financial headlines (Title Case headlines defeat case).
COMMON_WORDS = {
    "total", "southern", "target", "visa", "ge", "pico", "rex", "general", "national", "united", "american",
    "bank", "banks", "india", "indian", "capital", "finance", "power", "energy", "steel", "cement", "sun",
    "future", "orient", "gold", "hindustan", "global", "prime", "star", "max", "delta", "focus", "alliance",
    "ashok", "titan", "tata", "bharat", "jet", "vijaya", "syndicate", "allahabad", "andhra", "central",
    "union", "state", "reliance", "infra", "dish", "wockhardt unit",
}  # fmt: skip


def keep(name: str) -> bool:
    name = name.strip()
    return len(name) >= 3 and any(c.isupper() for c in name) and name.lower() not in COMMON_WORDS


def stocknet(data: Path) -> dict[str, str]:
    import pandas as pd

    table = pd.read_parquet(
        data / "stocknet" / "train.parquet", columns=["ticker", "company"]
    ).drop_duplicates()
    names: dict[str, str] = {}
    for ticker, company in table.itertuples(index=False):
        full = re.sub(r"\s+", " ", company).strip()
        short = _SUFFIX.sub("", full.removeprefix("The ")).strip(" ,&")
        for name in {full, full.removeprefix("The "), short}:
            if keep(name):
                names.setdefault(name, ticker.replace("-", "."))
    return names


def sentfin(data: Path) -> dict[str, str]:
    import pandas as pd

    sys.path.insert(0, str(ROOT))
    from training.tickers import NameMatcher

    table = pd.read_parquet(data / "sentfin" / "entities.parquet")
    names: dict[str, str] = {}
    for symbol, aliases in table.itertuples(index=False):
        aliases = list(aliases)
        if symbol in NOT_COMPANIES or not any(_LEGAL.search(a.strip()) for a in aliases):
            continue  # a sector, theme, exchange or index, not a company
        for alias in aliases:
            if keep(alias) and alias != symbol:
                names.setdefault(alias.strip(), symbol)
    # Dev check: how often each alias matches a headline annotated with its company.
    alias_symbol = {a.strip().lower(): s for s, aliases in table.itertuples(index=False) for a in aliases}
    dev = pd.concat([pd.read_parquet(data / "sentfin" / f"{s}.parquet") for s in ("train", "validation")])
    matcher = NameMatcher(names)
    seen: dict[str, list[int]] = {}
    for text, group in dev.groupby("text"):
        truth = {alias_symbol.get(e.strip().lower()) for e in group["entity"]}
        for _, alias, symbol in matcher.matches(text):
            seen.setdefault(alias, []).append(int(symbol in truth))
    dropped = sorted(a for a, hits in seen.items() if len(hits) >= 3 and sum(hits) / len(hits) < 0.5)
    print(f"india_sentfin: {len(dropped)} aliases dropped on the dev headlines: {', '.join(dropped)}")
    return {k: v for k, v in names.items() if k.lower() not in dropped}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()
    data = Path(args.data)
    out = ROOT / "newsimpact" / "ticker_maps"
    out.mkdir(exist_ok=True)
    for name, build, source in (
        ("us_stocknet", stocknet, "StockNet (Xu & Cohen 2018), company names, MIT"),
        ("india_sentfin", sentfin, "SEntFiN 1.0 entity table (Sinha et al. 2022), MIT"),
    ):
        names = build(data)
        payload = {
            "version": MAP_VERSION,
            "source": source,
            "tickers": len(set(names.values())),
            "names": names,
        }
        (out / f"{name}.json").write_text(
            json.dumps(payload, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
        )
        print(f"{name}: {len(names)} names for {payload['tickers']} tickers -> {out / name}.json")


if __name__ == "__main__":
    main()
