"""Write (or check) docs/bosun.schema.json, the JSON Schema of `.github/bosun.yml`.

.venv/bin/python scripts/gen_repo_schema.py          # rewrite the file
.venv/bin/python scripts/gen_repo_schema.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.domain.repoconfig import render_json_schema  # noqa: E402

TARGET = ROOT / "docs" / "bosun.schema.json"


def main(argv: list[str]) -> int:
    text = render_json_schema()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date; run scripts/gen_repo_schema.py")
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
