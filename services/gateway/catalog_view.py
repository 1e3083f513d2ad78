"""The catalog as the request path needs it: indexed once per catalog version, read many times per second.

Everything derivable from the snapshot alone (the channels serving a model by priority, the group lookups, the
upstream keys unsealed) is computed here when the catalog changes, never per request.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

from shared import crypto
from shared.catalog import Catalog, Channel, Group, Model
from shared.events import KeySnapshot, ModelPrice
from shared.pricing import PPM

log = logging.getLogger("faregate.gateway.catalog")


@dataclass(frozen=True)
class ChannelView:
    channel: Channel
    api_keys: tuple[str, ...]  # unsealed; never logged
    cost_price: dict[str, ModelPrice]  # public model -> what this channel costs the operator

    @property
    def id(self) -> str:
        return self.channel.id


def _scaled(price: ModelPrice, ratio_ppm: int) -> ModelPrice:
    def s(v: int) -> int:
        return (v * ratio_ppm + PPM // 2) // PPM

    return ModelPrice(input=s(price.input), output=s(price.output), cached_input=s(price.cached_input))


@dataclass
class CatalogView:
    catalog: Catalog
    models: dict[str, Model] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)
    # public model -> enabled channels serving it, highest priority first (ties in catalog order)
    channels_for: dict[str, list[ChannelView]] = field(default_factory=dict)
    channels: dict[str, ChannelView] = field(default_factory=dict)

    @classmethod
    def build(cls, catalog: Catalog, secret: str) -> CatalogView:
        view = cls(catalog=catalog)
        view.models = {m.name: m for m in catalog.models}
        view.groups = {g.name: g for g in catalog.groups}
        by_model: dict[str, list[ChannelView]] = defaultdict(list)
        for ch in catalog.channels:
            keys = []
            for sealed in ch.api_keys_enc:
                try:
                    keys.append(crypto.unseal(sealed, secret))
                except Exception:  # a key sealed under another secret: unusable; skip it rather than crash
                    log.error("channel key cannot be unsealed with this secret", extra={"channel_id": ch.id})
            costs = {}
            for name in ch.models:
                model = view.models.get(name)
                if model is not None:
                    costs[name] = _scaled(model.list_price or model.price, ch.cost_ratio_ppm)
            cv = ChannelView(channel=ch, api_keys=tuple(keys), cost_price=costs)
            view.channels[ch.id] = cv
            if ch.status != "enabled":
                continue
            for name in ch.models:
                by_model[name].append(cv)
        for name, lst in by_model.items():
            view.channels_for[name] = sorted(lst, key=lambda c: -c.channel.priority)
        return view

    def group_of(self, snap: KeySnapshot) -> Group:
        return self.groups.get(snap.group) or Group(name=snap.group)

    def allowed(self, snap: KeySnapshot, model: str) -> bool:
        if snap.models and model not in snap.models:
            return False
        group = self.group_of(snap)
        return not group.models or model in group.models

    def channels_serving(self, model: str, group: str) -> list[ChannelView]:
        return [c for c in self.channels_for.get(model, ()) if not c.channel.groups or group in c.channel.groups]

    def models_for(self, snap: KeySnapshot) -> list[Model]:
        return [m for m in self.catalog.models if self.allowed(snap, m.name)]
