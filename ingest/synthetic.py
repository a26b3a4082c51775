"""The embedded synthetic data set: tweets with procedurally drawn photos of known appeal.

Each image has a latent visual appeal that a convolutional network can learn (colourfulness,
contrast, brightness and a number of motifs); engagement is user effect × time effect × appeal ×
noise with heavy-tailed retweets and likes. The archive is written as twarc2 JSONL (raw API v2
pages), so it goes through exactly the same `ingest archive` path as real data, and the latent
appeal is written beside it so the demo can report the oracle's pairwise accuracy.
"""
from __future__ import annotations

import colorsys
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HASHTAGS = (
    "photography sunset travel nature art food cats dogs city beach mountains flowers "
    "streetart portrait weekend coffee design architecture sky garden autumn winter music "
    "friends love summer night ocean vintage"
).split()
WORDS = (
    "what a view today love this one more time finally here look at that light so much "
    "color never gets old morning walk best day ever new favourite spot just another "
    "lovely evening with my little friend"
).split()
START = datetime(2026, 6, 1, tzinfo=timezone.utc)
DAYS = 90
PAGE_SIZE = 100


@dataclass
class SyntheticConfig:
    """Options of `iipa ingest synthetic`."""

    out: Path
    """Folder for `archive.jsonl`, `images/` and `appeal.parquet`."""
    users: int = 40
    """Number of users."""
    tweets_per_user: int = 40
    """Photo tweets per user over the ~3 months."""
    image_size: int = 128
    """Side of the square photos drawn (pixels)."""
    seed: int = 0
    """Seed of every random choice: same seed, same bytes."""


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """One photo as an HxWx3 uint8 array and its latent appeal (roughly zero mean, unit scale).

    Appeal rises with saturation and contrast, with motifs, and with brightness near 0.6: global
    statistics a CNN picks up quickly, plus a local pattern (motifs) that it must find.
    """
    hue, sat, val, contrast = rng.random(4)
    motifs = int(rng.integers(0, 5))
    val = 0.25 + 0.7 * val
    top = np.array(colorsys.hsv_to_rgb(hue, sat, val))
    bottom = np.array(colorsys.hsv_to_rgb(hue, sat, val * (1 - 0.8 * contrast)))
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    img = (1 - t) * top + t * bottom
    img = np.broadcast_to(img, (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size]
    motif_rgb = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, min(1.0, sat + 0.3), 0.95))
    for _ in range(motifs):
        cy, cx = rng.integers(size // 8, size - size // 8, 2)
        r = rng.integers(size // 14, size // 6)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[mask] = contrast * motif_rgb + (1 - contrast) * img[mask]
    img += rng.normal(0, 0.03, img.shape)  # sensor noise, so no two images are alike
    appeal = 2.0 * (sat - 0.5) + 1.4 * (contrast - 0.5) + 0.35 * (motifs - 2) - 3.0 * abs(val - 0.6)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), float(appeal + 0.3)


def _caption(rng: np.random.Generator, tags: list[str], mention: str | None) -> str:
    words = list(rng.choice(WORDS, size=int(rng.integers(0, 9))))
    parts = words + [f"#{t}" for t in tags]
    if mention:
        parts.insert(0, f"@{mention}")
    return " ".join(parts)


def generate(config: SyntheticConfig) -> dict:
    """Write the synthetic archive, images and latent appeal; return a summary."""
    rng = np.random.default_rng(config.seed)
    out = Path(config.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    usernames = [f"user{u:04d}" for u in range(config.users)]
    tweets, media, appeal_rows = [], [], []
    next_id = 1_800_000_000_000_000_000 + config.seed * 10_000_000
    for u in range(config.users):
        follower_effect = rng.lognormal(np.log(40.0), 1.0)
        user_tags = list(rng.choice(HASHTAGS, size=int(rng.integers(2, 5)), replace=False))
        # Posting rhythm: a user posts in bursts around a few active periods of the 3 months.
        centres = rng.uniform(0, DAYS, size=int(rng.integers(2, 5)))
        days = np.clip(rng.choice(centres, config.tweets_per_user) + rng.normal(0, 6, config.tweets_per_user), 0, DAYS)
        for day in np.sort(days):
            created = START + timedelta(days=float(day))
            n_photos = 1 if rng.random() < 0.85 else 2
            tags = list(rng.choice(user_tags, size=int(rng.integers(1, len(user_tags) + 1)), replace=False))
            mention = rng.choice(usernames) if rng.random() < 0.2 else None
            tweet_id = str(next_id)
            next_id += int(rng.integers(1, 1000))
            keys, appeals = [], []
            for i in range(n_photos):
                pixels, appeal = draw_image(rng, config.image_size)
                media_key = f"3_{tweet_id}{i}"
                path = out / "images" / f"{media_key}.jpg"
                Image.fromarray(pixels).save(path, quality=92)
                keys.append(media_key)
                appeals.append(appeal)
                media.append({"media_key": media_key, "type": "photo", "url": path.resolve().as_uri(),
                              "width": config.image_size, "height": config.image_size})
                appeal_rows.append({"tweet_id": tweet_id, "media_key": media_key, "appeal": appeal})
            # Weekly rhythm and a slow growth of the audience over the months.
            time_effect = np.exp(0.25 * np.sin(2 * np.pi * day / 7) + 0.3 * day / DAYS)
            mean = follower_effect * time_effect * np.exp(1.2 * float(np.mean(appeals))) * rng.lognormal(0, 0.35)
            text = _caption(rng, tags, mention)
            tweets.append({
                "id": tweet_id,
                "text": text,
                "author_id": str(10_000 + u),
                "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "entities": {
                    "hashtags": [{"tag": t} for t in tags],
                    **({"mentions": [{"username": str(mention)}]} if mention else {}),
                },
                "public_metrics": {
                    "retweet_count": int(rng.poisson(0.25 * mean)),
                    "like_count": int(rng.poisson(mean)),
                    "reply_count": int(rng.poisson(0.03 * mean)),
                    "quote_count": int(rng.poisson(0.01 * mean)),
                },
                "attachments": {"media_keys": keys},
            })
    collected = (START + timedelta(days=DAYS + 1)).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    users = [{"id": str(10_000 + u), "username": name} for u, name in enumerate(usernames)]
    by_key = {m["media_key"]: m for m in media}
    with open(out / "archive.jsonl", "w") as f:
        for start in range(0, len(tweets), PAGE_SIZE):
            page = tweets[start:start + PAGE_SIZE]
            keys = [k for t in page for k in t["attachments"]["media_keys"]]
            f.write(json.dumps({
                "data": page,
                "includes": {"media": [by_key[k] for k in keys], "users": users},
                "meta": {"result_count": len(page), "newest_id": page[-1]["id"], "oldest_id": page[0]["id"]},
                "__twarc": {"url": "synthetic://iipa", "version": "iipa", "retrieved_at": collected},
            }) + "\n")
    pq.write_table(pa.Table.from_pylist(appeal_rows), out / "appeal.parquet")
    return {"tweets": len(tweets), "images": len(media), "users": config.users, "out": str(out)}
