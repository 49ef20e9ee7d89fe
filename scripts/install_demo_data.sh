#!/usr/bin/env bash
# Installs the real data of the embedded demo corpus (ASSETS.md) and the test browser:
# Debian packages (Open Clip Art, Noto Color Emoji, Symbola, Unicode/CLDR data, Chromium) and the npm
# package emoji-datasource-twitter, unpacked under data/ (ignored by git). Skips what is present.
#   bash scripts/install_demo_data.sh [DATA_DIR]
set -euo pipefail
data_dir=${1:-data}
debs=(openclipart-png openclipart-svg fonts-noto-color-emoji fonts-symbola unicode-data unicode-cldr-core chromium chromium-driver)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
twemoji="$data_dir/emoji-datasource-twitter"
if [ ! -f "$twemoji/emoji.json" ]; then
  mkdir -p "$data_dir"
  tmp=$(mktemp -d)
  echo "fetching npm package emoji-datasource-twitter"
  (cd "$tmp" && npm pack --silent emoji-datasource-twitter >/dev/null)
  mkdir -p "$twemoji.partial"
  tar -xzf "$tmp"/emoji-datasource-twitter-*.tgz -C "$twemoji.partial" --strip-components=1
  rm -rf "$twemoji" "$tmp"
  mv "$twemoji.partial" "$twemoji"
fi
echo "demo data ready: /usr/share/openclipart, Noto Color Emoji, Symbola, Unicode/CLDR, $twemoji"
