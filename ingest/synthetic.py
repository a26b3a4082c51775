"""The embedded synthetic data set: tweets with procedurally drawn photos of known appeal.

Each image has a latent visual appeal that lies in its content, as IIPA finds for real photos: the
kind of subject drawn and how many there are. Brightness, colourfulness, contrast and sharpness are
drawn independently of it, so eval's simple statistics rank near chance and a convolutional network
has to learn the shapes. Engagement is user effect × time effect × appeal × noise with heavy-tailed
retweets and likes. The archive is written as twarc2 JSONL (raw API v2
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
from PIL import Image, ImageDraw, ImageFilter

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


KINDS = {"star": 1.0, "triangle": 0.35, "square": -0.35, "disc": -1.0}
"""Subject kinds and the appeal each adds: what is shown matters most."""
COUNT_APPEAL = -0.6
"""Appeal added per object beyond two (one to three objects): one clear subject beats clutter."""
SUBJECT_SHARE = (0.12, 0.18)
"""Share of the frame the subjects cover together, drawn at random for each image."""
SUPERSAMPLE = 2  # shapes are drawn at twice the size and scaled down, so their edges are smooth


def _colour(rng: np.random.Generator) -> np.ndarray:
    """One colour from the palette every background and every subject draws from alike."""
    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.25, 0.95)))


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _outline(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (2×n) of the kind's shape, turned at random, scaled to unit area."""
    sides = {"triangle": 3, "square": 4, "star": 10, "disc": 64}[kind]
    angles = rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
    radii = np.where(np.arange(sides) % 2, 0.45, 1.0) if kind == "star" else np.ones(sides)
    x, y = radii * np.cos(angles), radii * np.sin(angles)
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))  # shoelace
    return np.stack([x, y]) / np.sqrt(area)


def _centres(rng: np.random.Generator, count: int, reach: float, size: float) -> list[np.ndarray]:
    """Centres of `count` objects reaching `reach` from their centre that neither overlap nor
    touch the frame's edge."""
    margin = reach + size / 64
    while True:
        centres = [rng.uniform(margin, size - margin, 2) for _ in range(count)]
        if all(np.hypot(*(a - b)) > 2 * reach for i, a in enumerate(centres) for b in centres[:i]):
            return centres


def draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """One photo as an HxWx3 uint8 array and its latent appeal (roughly zero mean, unit scale).

    Appeal is content and composition: which kind of subject is shown (star > triangle > square >
    disc) and how many of them (one clear subject beats three). Everything a global statistic
    measures is drawn independently of it: subject and background colours come from one palette,
    the subjects cover the same share of the frame however many there are, and blur and sensor
    noise vary at random, so brightness, colourfulness, contrast and sharpness rank pairs near
    chance and a CNN has to learn shapes and count them.
    """
    kind = str(rng.choice(list(KINDS)))
    count = int(rng.integers(1, 4))
    top, bottom = _colour(rng), _colour(rng)
    while True:  # a subject that stands out from the background, lighter or darker alike
        subject = _colour(rng)
        if abs(_luma(subject) - _luma((top + bottom) / 2)) > 0.2:
            break
    big = size * SUPERSAMPLE
    t = np.linspace(0.0, 1.0, big)[:, None, None]
    if rng.random() < 0.5:
        t = t.transpose(1, 0, 2)  # the gradient runs down or across
    background = np.broadcast_to((1 - t) * top + t * bottom, (big, big, 3))
    canvas = Image.fromarray((background * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    # Each object's side: the subjects' total area is a share of the frame that does not depend on count.
    scale = np.sqrt(rng.uniform(*SUBJECT_SHARE) / count) * big
    outlines = [_outline(kind, rng) * scale for _ in range(count)]
    reach = max(float(np.hypot(*o).max()) for o in outlines)
    fill = tuple(int(v * 255) for v in subject)
    for centre, outline in zip(_centres(rng, count, reach, big), outlines):
        draw.polygon([tuple(p) for p in (outline + centre[:, None]).T.tolist()], fill=fill)
    canvas = canvas.resize((size, size), Image.Resampling.BOX)
    canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 2.0) * size / 128))
    img = np.asarray(canvas, dtype=np.float64) / 255
    noise = np.exp(rng.uniform(np.log(0.01), np.log(0.1)))
    img = img + rng.normal(0, noise, img.shape)  # sensor noise, so no two images are alike
    appeal = KINDS[kind] + COUNT_APPEAL * (count - 2)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), float(appeal - 0.2)


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
