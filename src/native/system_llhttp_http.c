/*
 * llhttp's http.c from the system, compiled into vmhealth_fastlane where the system
 * ships llhttp as C sources to build against (Debian's node-llhttp: /usr/share/llhttp)
 * rather than as a library. setuptools takes only relative source paths, so setup.py
 * puts that directory on the include path and compiles this file; nothing of llhttp
 * is kept in this repository. (One file per source: they cannot share a unit.)
 */
#include "http.c"
