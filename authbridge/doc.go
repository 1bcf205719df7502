// Package authbridge owns registry credentials and tokens: it finds
// credentials exactly as podman does (auth files, credential helpers,
// credentials handed over by podman's additional-layer-store auth helper),
// exchanges them for registry tokens, and refreshes those tokens before they
// expire so that background fetches hours after a pull never fail.
package authbridge
