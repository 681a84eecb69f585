"""Configuration schema of the ``data:`` section of ``params.yaml`` (one block per dataset).

Where each dataset comes from (``sources``: mirrors, checksums, terms) is defined in
``params.yaml`` alone; the schema only says what a source may hold.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SEED_MAX = 2**32 - 1  # numpy's legacy seeding takes 0 .. 2**32 - 1
MAX_TEXT_LENGTH = 512  # tokens: the position embeddings of every backbone this project builds


class Strict(BaseModel):
    """Unknown keys are errors; inf/nan are never a sensible setting (a timeout of inf hangs)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SourceFile(Strict):
    """One file to fetch: mirrors tried in order, optional published sha256, how to unpack.

    Where it goes (see :mod:`mitp.data.download`): a plain file (``unpack: none``) lands at
    ``data/raw/<dataset>/<name>``; an archive is fetched to ``data/raw/<dataset>/downloads/<name>``
    and unpacked into ``data/raw/<dataset>/<extract_to>``. A source with neither ``urls`` nor
    ``kaggle`` is one the user must get by hand (``terms``, ``homepage``): the download stage
    checks that it is there and otherwise stops with instructions.
    """

    name: str = Field(description="file name under data/raw/<dataset>/downloads/ (archives) or data/raw/<dataset>/")
    urls: list[str] = Field(default_factory=list, description="mirrors, tried in order")
    sha256: str | None = Field(None, description="published checksum; none: trust on first download, recorded in the lock file")
    unpack: Literal["none", "tar", "zip", "auto"] = "auto"
    extract_to: str | None = Field(None, description="folder under data/raw/<dataset>/ (default: name without archive suffix)")
    kaggle: str | None = Field(None, description="Kaggle dataset slug, fetched with the kaggle CLI")
    terms: str | None = Field(None, description="terms the user must accept; shown when the source cannot be fetched")
    homepage: str | None = Field(None, description="where a person gets the file or reads its terms")
    satisfied_by: str | None = Field(
        None, description="a key of this dataset's section (e.g. images_path) that, when set, replaces this source"
    )

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None:
            value = value.strip().lower()
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise ValueError("sha256 must be 64 hex digits")
        return value

    @field_validator("name", "extract_to")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.replace("\\", "/").split("/")
        if value.startswith(("/", "\\")) or ".." in parts or value.strip("/") in ("", ".", "downloads"):
            raise ValueError(f"{value!r} must name a file or folder inside the dataset's raw folder (not ., .., downloads)")
        return value


class DownloadOptions(Strict):
    """How the download stage talks to servers."""

    retries: int = Field(5, ge=0, le=100, description="retries per URL after a connection error or HTTP 5xx")
    backoff_s: float = Field(2.0, ge=0.0, le=3600.0, description="first wait between retries; doubles each time (max 60 s)")
    timeout_s: float = Field(60.0, gt=0.0, le=86400.0, description="socket timeout")
    keep_archives: bool = Field(False, description="keep downloads/<archive> after unpacking (costs disk)")
    max_unpacked_gb: float = Field(64.0, gt=0.0, le=1e6, description="refuse an archive that unpacks to more than this")
    max_compression_ratio: float = Field(
        200.0, gt=1.0, description="refuse an archive member (zip), stream (tar) or whole archive (all it unpacks "
                                   "against its file size) over 1 MiB compressed better than this"
    )
    max_members: int = Field(
        300_000, ge=1, le=100_000_000, description="refuse an archive of more members than this (Food-101 has 101,000)"
    )


class DatasetConfig(Strict):
    """Settings every dataset has."""

    task: Literal["single_label", "multi_label"] = "single_label"
    max_text_length: int = Field(40, ge=2, le=MAX_TEXT_LENGTH)
    local_path: str | None = Field(None, description="a copy the user already has (raw layout)")
    sources: list[SourceFile] = Field(default_factory=list, description="where to get it: set in params.yaml")
    bad_records: Literal["skip", "fail"] = "skip"
    max_skip_fraction: float = Field(0.05, ge=0.0, le=1.0)
    verify_workers: int = Field(0, ge=0, le=1024, description="threads decoding images in prepare (0: one per CPU)")
    lock_file: str | None = Field(None, description="sha256 record of fetched files (default: locks/<name>.lock.json, tracked by git)")
    download: DownloadOptions = DownloadOptions()


class SyntheticConfig(DatasetConfig):
    """The generated visual-entailment set (SNLI-VE layout; :mod:`mitp.data.synthetic` makes it)."""

    max_text_length: int = Field(16, ge=2, le=MAX_TEXT_LENGTH)
    n_train: int = Field(3000, ge=3, le=10_000_000)
    n_val: int = Field(600, ge=3, le=10_000_000)
    n_test: int = Field(600, ge=3, le=10_000_000)
    image_size: int = Field(32, ge=8, le=4096)
    hypotheses_per_image: int = Field(1, ge=1, le=1000)
    generator_seed: int = Field(0, ge=0, le=SEED_MAX)


class Food101Config(DatasetConfig):
    max_text_length: int = Field(40, ge=2, le=MAX_TEXT_LENGTH)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0, le=SEED_MAX)
    text_source: Literal["titles"] = "titles"


class MMIMDBConfig(DatasetConfig):
    task: Literal["single_label", "multi_label"] = "multi_label"
    max_text_length: int = Field(256, ge=2, le=MAX_TEXT_LENGTH)


class SNLIVEConfig(DatasetConfig):
    max_text_length: int = Field(40, ge=2, le=MAX_TEXT_LENGTH)
    images_path: str | None = Field(None, description="Flickr30k images folder (<id>.jpg), if not in the raw layout")


class DataConfig(Strict):
    root: str = "data"
    locks_dir: str = Field("locks", description="download lock files (sha256 of what was fetched); keep in git")
    synthetic: SyntheticConfig = SyntheticConfig()
    food101: Food101Config = Food101Config()
    mmimdb: MMIMDBConfig = MMIMDBConfig()
    snli_ve: SNLIVEConfig = SNLIVEConfig()
