"""The old name of inference.files, kept until every helper's branch imports inference.files (then delete it)."""
from inference.files import copy_file, replace_dir, sha256, write_bytes, write_json  # noqa: F401
