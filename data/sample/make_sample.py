"""Regenerate the embedded sample: ``python data/sample/make_sample.py`` (deterministic).

Every story below was written by the newsimpact team; companies and tickers are fictional. Each story
carries the labels its author assigned (see README.md in this folder for the rules), and is rendered for
several companies with different figures, so the labels travel with the story, not with the company.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COMPANIES = [
    ("Northwind Semiconductor", "NWSC", "NASDAQ"),
    ("Harbor Mutual Bank", "HMBK", "NYSE"),
    ("Solace Pharmaceuticals", "SLCP", "NASDAQ"),
    ("Crestline Energy", "CRLE", "NYSE"),
    ("Tidewater Retail Group", "TWRG", "NYSE"),
    ("Ardent Motors", "ARDM", "NASDAQ"),
    ("Quillfeather Software", "QFSW", "NASDAQ"),
    ("Bramble Foods", "BRMF", "NYSE"),
    ("Ironvale Mining", "IRVM", "NYSE"),
    ("Lumenarc Airlines", "LARC", "NYSE"),
    ("Pinecrest Telecom", "PNCT", "NYSE"),
    ("Vantage Biologics", "VNBX", "NASDAQ"),
    ("Oakhurst Logistics", "OKHL", "NASDAQ"),
    ("Meridian Cloud Systems", "MRCS", "NASDAQ"),
]
# Validation stories use these companies only, so no (story, company) pair is shared with training.
VALIDATION_COMPANIES = {"OKHL", "MRCS"}

# (template, sentiment, sentiment_score, impact, topics). {co}: company, {tk}: ticker, {ex}: exchange,
# {n}: a figure. Scale: strongly negative < negative < neutral < positive < strongly positive.
SINGLE = [
    (
        "{co} ({ex}: {tk}) posts record quarterly profit and raises full-year guidance",
        "strongly positive",
        0.85,
        0.8,
        ["earnings", "guidance"],
    ),
    (
        "${tk} beats on revenue and earnings per share, lifts outlook for the year",
        "strongly positive",
        0.8,
        0.75,
        ["earnings", "guidance"],
    ),
    (
        "{co} agrees to be acquired at a {n}% premium to its last close",
        "strongly positive",
        0.8,
        0.9,
        ["m&a"],
    ),
    (
        "{co} shares jump {n}% after regulators approve its flagship product",
        "strongly positive",
        0.75,
        0.8,
        ["legal & regulation", "product"],
    ),
    ("{co} announces $5 billion buyback and a special dividend", "strongly positive", 0.7, 0.6, ["dividend"]),
    (
        "{co} unveils AI platform, signs three Fortune 500 customers at launch",
        "positive",
        0.5,
        0.45,
        ["ai", "product"],
    ),
    ("Analyst upgrades {co} to buy, citing margin recovery", "positive", 0.45, 0.4, ["analyst rating"]),
    ("{co} raises quarterly dividend by {n}%", "positive", 0.4, 0.3, ["dividend"]),
    (
        "{co} ({ex}: {tk}) wins multi-year supply contract worth $400 million",
        "positive",
        0.5,
        0.45,
        ["product"],
    ),
    ("{co} quarterly sales rise {n}%, slightly ahead of expectations", "positive", 0.4, 0.4, ["earnings"]),
    ("${tk} price target raised to $180 at a major broker", "positive", 0.35, 0.3, ["analyst rating"]),
    ("{co} uses machine learning to cut fulfilment costs, management says", "positive", 0.3, 0.2, ["ai"]),
    ("{co} to report third-quarter results on October {n}", "neutral", 0.0, 0.05, ["earnings"]),
    ("{co} reaffirms full-year outlook at investor day", "neutral", 0.05, 0.15, ["guidance"]),
    ("{co} schedules annual shareholder meeting for May {n}", "neutral", 0.0, 0.02, []),
    ("{co} ({ex}: {tk}) names new head of investor relations", "neutral", 0.0, 0.05, ["management change"]),
    ("${tk} trading volume in line with its 30-day average", "neutral", 0.0, 0.02, ["stock commentary"]),
    (
        "{co} completes previously announced refinancing of its notes due 2027",
        "neutral",
        0.05,
        0.1,
        ["debt & rates"],
    ),
    ("{co} misses revenue estimates as demand softens", "negative", -0.45, 0.5, ["earnings"]),
    ("Analyst downgrades {co} to hold on valuation concerns", "negative", -0.35, 0.35, ["analyst rating"]),
    (
        "{co} faces class-action lawsuit over product disclosures",
        "negative",
        -0.4,
        0.35,
        ["legal & regulation"],
    ),
    ("{co} chief executive steps down unexpectedly", "negative", -0.4, 0.5, ["management change"]),
    (
        "${tk} falls {n}% as input costs squeeze margins",
        "negative",
        -0.45,
        0.45,
        ["stock movement", "earnings"],
    ),
    ("{co} delays launch of its next-generation product to next year", "negative", -0.35, 0.35, ["product"]),
    (
        "{co} ({ex}: {tk}) slashes guidance and warns of a full-year loss; shares plunge {n}%",
        "strongly negative",
        -0.85,
        0.9,
        ["guidance", "earnings"],
    ),
    (
        "{co} suspends its dividend amid a liquidity crunch",
        "strongly negative",
        -0.8,
        0.75,
        ["dividend", "debt & rates"],
    ),
    (
        "Regulators open fraud probe into {co} accounting practices",
        "strongly negative",
        -0.8,
        0.8,
        ["legal & regulation"],
    ),
    (
        "{co} files for bankruptcy protection after talks with lenders fail",
        "strongly negative",
        -0.95,
        0.95,
        ["debt & rates"],
    ),
    (
        "{co} recalls its best-selling product over safety defects",
        "strongly negative",
        -0.7,
        0.7,
        ["product", "legal & regulation"],
    ),
]

# (template, sentiment or None for mixed, score or None, impact, topics, score of {co}, score of {co2})
PAIR = [
    (
        "{co} beats estimates while rival {co2} cuts its outlook",
        None,
        None,
        0.5,
        ["earnings", "guidance"],
        0.7,
        -0.7,
    ),
    ("{co} to acquire {co2} for $12 billion in cash", "positive", 0.4, 0.8, ["m&a"], -0.1, 0.8),
    ("{co} sues {co2} over patent infringement", "negative", -0.2, 0.3, ["legal & regulation"], 0.1, -0.5),
    ("{co} wins {co2} contract as customer switches suppliers", "positive", 0.3, 0.35, ["product"], 0.6, 0.0),
    ("${tk} gains, ${tk2} slides after market-share report", None, None, 0.4, ["stock movement"], 0.5, -0.5),
    (
        "{co} and {co2} form joint venture to build AI data centres",
        "positive",
        0.5,
        0.4,
        ["ai", "m&a"],
        0.5,
        0.5,
    ),
    ("{co} poaches {co2} chief technology officer", None, None, 0.25, ["management change"], 0.3, -0.3),
]

MARKET = [
    (
        "Stocks rally as inflation cools more than expected",
        "strongly positive",
        0.7,
        0.6,
        ["macro", "markets"],
    ),
    (
        "Fed holds rates steady, as expected; markets little changed",
        "neutral",
        0.0,
        0.2,
        ["central banks", "macro"],
    ),
    (
        "Treasury yields spike after hot jobs report, equities slide",
        "negative",
        -0.45,
        0.55,
        ["debt & rates", "macro", "markets"],
    ),
    (
        "Oil jumps {n}% after producers agree deeper output cuts",
        "positive",
        0.3,
        0.5,
        ["energy", "commodities"],
    ),
    (
        "Dollar weakens against the euro ahead of central bank meeting",
        "neutral",
        0.0,
        0.25,
        ["currencies", "central banks"],
    ),
    (
        "Global markets tumble as trade talks collapse",
        "strongly negative",
        -0.75,
        0.75,
        ["politics", "markets", "macro"],
    ),
    ("Gold steadies near record high as investors seek safety", "neutral", 0.05, 0.2, ["commodities"]),
    (
        "Lawmakers pass chip subsidy bill, boosting semiconductor outlook",
        "positive",
        0.5,
        0.45,
        ["politics", "legal & regulation"],
    ),
]

ARTICLES = [
    (
        "{co} ({ex}: {tk}) on Tuesday reported third-quarter revenue of $4.2 billion, up {n}% from a year "
        "earlier and well above the $3.8 billion analysts had expected, as demand from data-centre customers "
        "accelerated. Net income more than doubled to $910 million, or $1.42 a share. The company raised its "
        "full-year revenue forecast to between $16.1 billion and $16.4 billion, from a previous range of $15.0 "
        "billion to $15.5 billion, and said gross margin would expand for a fourth straight quarter. "
        '"Customers are moving from pilots to production, and our order book has never been deeper," the chief '
        "executive told analysts on a conference call. The company also announced a $3 billion share repurchase "
        "programme. Shares rose {n}% in after-hours trading. Analysts at two brokers lifted their price targets, "
        "citing the stronger guidance and the pace of adoption of the company's AI accelerators. Some cautioned "
        "that supply constraints could limit shipments in the first half of next year, and the company said "
        "lead times for its newest products remain above twenty weeks.",
        "strongly positive",
        0.85,
        0.85,
        ["earnings", "guidance", "ai"],
    ),
    (
        "{co} ({ex}: {tk}) cut its annual profit forecast on Thursday and said its chief financial officer "
        "would leave at the end of the month, sending its shares down {n}% in early trading. The company now "
        "expects adjusted earnings of $2.10 to $2.25 a share, compared with its earlier outlook of $3.00 to "
        "$3.20, blaming weaker consumer spending, higher freight costs and an inventory write-down of $240 "
        "million. Second-quarter sales fell 9% to $2.7 billion, missing estimates for a third consecutive "
        "quarter. The company said it would close forty stores and cut about 1,200 jobs, and that it had drawn "
        "$500 million on its revolving credit facility as a precaution. Credit analysts said the company's "
        'leverage was approaching the limit set in its loan covenants. "The reset is bigger than anyone '
        'modelled," one analyst wrote, moving the stock to underperform. The company did not name a successor '
        "for the finance chief and said an external search was under way.",
        "strongly negative",
        -0.85,
        0.85,
        ["guidance", "earnings", "management change"],
    ),
    (
        "{co} ({ex}: {tk}) said on Monday it had agreed to buy {co2} ({ex2}: {tk2}) for $48 a share in cash, "
        "valuing the target at about $9.6 billion including debt. The offer is a {n}% premium to {co2}'s "
        "closing price on Friday. The boards of both companies have approved the deal, which is expected to "
        "close in the second half of next year, subject to shareholder and regulatory approvals. {co} said the "
        "combination would generate $350 million of annual cost savings by the third year and add to earnings "
        "in the first full year after closing. It will fund the purchase with cash on hand and $6 billion of new "
        "debt, and said it would pause share buybacks to reduce leverage. Shares of {co2} jumped to just below "
        "the offer price, while {co} stock slipped 4% as some investors questioned the price and the added debt. "
        "Antitrust specialists said the deal could draw scrutiny in two overlapping product lines.",
        "positive",
        0.35,
        0.8,
        ["m&a", "debt & rates"],
    ),
    (
        "{co} ({ex}: {tk}) will hold its annual investor day on Wednesday in New York, where management is "
        "expected to present its medium-term targets for revenue growth, margins and capital returns. The "
        "company reiterated on Friday the full-year outlook it gave in its most recent quarterly report and "
        "said it did not plan to update it at the event. The presentation will be webcast on the company's "
        "investor relations website, and slides will be published before the event begins. Analysts expect the "
        "company to discuss its software subscription business, which it has said will account for a growing "
        "share of sales, and its plans for capital spending. The company last held an investor day three years "
        "ago. Shares were little changed in line with the broader market, and trading volume was near its "
        "average of the past month.",
        "neutral",
        0.0,
        0.15,
        ["guidance"],
    ),
    (
        "Regulators said on Wednesday they had opened a formal investigation into how {co} ({ex}: {tk}) "
        "recognised revenue on long-term contracts, and the company said it would delay filing its annual "
        "report. {co} said an internal review had found that some contracts may have been recorded in the wrong "
        "periods and that prior results could be restated. The company's auditor has not completed its work. "
        "Shares fell {n}% on the news, their biggest one-day decline in more than a decade. Ratings agencies "
        "placed the company's credit rating on review for a possible downgrade, noting that a late filing could "
        "breach reporting covenants in its bonds. The company said it was cooperating fully, had placed two "
        "finance executives on leave, and that its liquidity remained adequate. Law firms announced that they "
        "were investigating claims on behalf of shareholders.",
        "strongly negative",
        -0.9,
        0.9,
        ["legal & regulation", "management change"],
    ),
    (
        "{co} ({ex}: {tk}) raised its quarterly dividend by {n}% on Tuesday and said it expected to keep "
        "increasing the payout in line with earnings, after a year in which free cash flow rose to a record. "
        "The new dividend is payable next month to shareholders of record at the end of this month. The company "
        "also said it had completed the refinancing of notes due next year, extending the average maturity of "
        "its debt to nine years at a lower average coupon. Management reiterated its full-year guidance. "
        "Income-focused investors welcomed the increase, which was slightly larger than analysts expected, and "
        "the shares rose modestly in morning trading.",
        "positive",
        0.45,
        0.35,
        ["dividend", "debt & rates"],
    ),
]


def _entity(co: str, tk: str, score: float) -> dict:
    return {"ticker": tk, "sentiment_score": score, "aliases": [co]}


def build(seed: int = 13) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, val = [], []

    def add(row: dict, companies: tuple[str, ...]) -> None:
        (val if any(tk in VALIDATION_COMPANIES for tk in companies) else train).append(row)

    for template, label, score, impact, topics in SINGLE:
        for co, tk, ex in rng.sample(COMPANIES, 8):
            text = template.format(co=co, tk=tk, ex=ex, n=rng.randint(3, 28))
            row = {
                "text": text,
                "sentiment": label,
                "sentiment_score": score,
                "impact": impact,
                "topics": topics,
                "entities": [_entity(co, tk, score)],
            }
            add(row, (tk,))
    for template, label, score, impact, topics, s1, s2 in PAIR:
        for _ in range(8):
            (co, tk, _ex), (co2, tk2, _ex2) = rng.sample(COMPANIES, 2)
            text = template.format(co=co, tk=tk, co2=co2, tk2=tk2)
            row = {
                "text": text,
                "sentiment": label,
                "sentiment_score": score,
                "impact": impact,
                "topics": topics,
                "entities": [_entity(co, tk, s1), _entity(co2, tk2, s2)],
            }
            add(row, (tk, tk2))
    for template, label, score, impact, topics in MARKET:
        for _ in range(4):
            text = template.format(n=rng.randint(2, 9))
            row = {
                "text": text,
                "sentiment": label,
                "sentiment_score": score,
                "impact": impact,
                "topics": topics,
                "entities": [],
            }
            (val if rng.random() < 0.15 else train).append(row)
    for i, (template, label, score, impact, topics) in enumerate(ARTICLES):
        for co, tk, ex in rng.sample(COMPANIES, 4):
            co2, tk2, ex2 = rng.choice([c for c in COMPANIES if c[1] != tk])
            text = template.format(co=co, tk=tk, ex=ex, co2=co2, tk2=tk2, ex2=ex2, n=rng.randint(3, 25))
            entities = [_entity(co, tk, score)]
            if i == 2:  # the takeover story: the target's holders win, the buyer's slip
                entities = [_entity(co, tk, -0.2), _entity(co2, tk2, 0.8)]
            row = {
                "text": text,
                "sentiment": label,
                "sentiment_score": score,
                "impact": impact,
                "topics": topics,
                "entities": entities,
            }
            add(row, tuple(e["ticker"] for e in entities))
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def published_at(i: int) -> str:
    """A publication time (UTC) for row i: about six stories a day from 2024-03-04, some after the New York
    close and on weekends, so `inference.signals` has sessions to place them on."""
    import datetime as dt

    start = dt.datetime(2024, 3, 4, tzinfo=dt.timezone.utc)
    hours = [13.25, 15.5, 17.75, 19.0, 21.5, 23.25]  # 09:15 ... 19:15 New York time (EDT from 10 March)
    when = start + dt.timedelta(days=i // len(hours), hours=hours[i % len(hours)])
    return when.isoformat().replace("+00:00", "Z")


def main() -> None:
    out = Path(__file__).resolve().parent
    train, val = build()
    for name, rows in (("train", train), ("validation", val)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for i, row in enumerate(rows):
                record = {"id": f"{name}-{i:04d}", **row, "published_at": published_at(i)}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"train: {len(train)} rows, validation: {len(val)} rows")


if __name__ == "__main__":
    main()
