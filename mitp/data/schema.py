"""Configuration schema of the ``data:`` section of ``params.yaml`` (one block per dataset)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceFile(_Strict):
    """One file to fetch: mirrors tried in order, optional published sha256, how to unpack."""

    name: str = Field(description="file name under data/raw/<dataset>/downloads/")
    urls: list[str] = Field(default_factory=list)
    sha256: str | None = None
    unpack: Literal["none", "tar", "zip", "auto"] = "auto"
    kaggle: str | None = Field(None, description="Kaggle dataset slug, fetched with the kaggle CLI")
    terms: str | None = Field(None, description="terms the user must accept; shown when the source cannot be fetched")


class DatasetConfig(_Strict):
    """Settings every dataset has."""

    task: Literal["single_label", "multi_label"] = "single_label"
    max_text_length: int = Field(40, ge=2)
    local_path: str | None = Field(None, description="a copy the user already has (raw layout)")
    sources: list[SourceFile] = Field(default_factory=list)
    bad_records: Literal["skip", "fail"] = "skip"
    max_skip_fraction: float = Field(0.05, ge=0.0, le=1.0)
    verify_workers: int = Field(0, ge=0, description="threads decoding images in prepare (0: one per CPU)")


class SyntheticConfig(DatasetConfig):
    """The generated visual-entailment set of DESIGN.md section 5 (SNLI-VE layout)."""

    max_text_length: int = Field(16, ge=2)
    n_train: int = Field(3000, ge=3)
    n_val: int = Field(600, ge=3)
    n_test: int = Field(600, ge=3)
    image_size: int = Field(32, ge=8)
    hypotheses_per_image: int = Field(1, ge=1)
    generator_seed: int = 0


class Food101Config(DatasetConfig):
    max_text_length: int = Field(40, ge=2)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = 0
    text_source: Literal["titles"] = "titles"


class MMIMDBConfig(DatasetConfig):
    task: Literal["single_label", "multi_label"] = "multi_label"
    max_text_length: int = Field(256, ge=2)


class SNLIVEConfig(DatasetConfig):
    max_text_length: int = Field(40, ge=2)
    images_path: str | None = Field(None, description="Flickr30k images folder (<id>.jpg), if not in the raw layout")


class DataConfig(_Strict):
    root: str = "data"
    synthetic: SyntheticConfig = SyntheticConfig()
    food101: Food101Config = Food101Config()
    mmimdb: MMIMDBConfig = MMIMDBConfig()
    snli_ve: SNLIVEConfig = SNLIVEConfig()
