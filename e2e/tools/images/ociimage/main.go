// ociimage writes a one-layer OCI image archive (an OCI image layout in a tar file) that
// `ctr images import` understands: static binaries and a few files, an image config with an
// entrypoint, command, user, environment and exposed ports. Output is reproducible: fixed
// timestamps, owners and ordering.
//
//	ociimage -o out.tar -name registry.example/app:1.0 -entrypoint /app -user 65532 \
//	    -file /app=path/to/binary -dir /tmp:1777
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    map[string]string `json:"platform,omitempty"`
}

type entry struct {
	name string
	mode int64
	dir  bool
	data []byte
	link string
}

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		log.Fatal(err)
	}
	return b
}

func main() {
	var files, dirs, links, env, expose list
	out := flag.String("o", "", "output archive")
	name := flag.String("name", "", "image reference, e.g. registry.k8s.io/pause:3.10")
	entrypoint := flag.String("entrypoint", "", "entrypoint, words separated by spaces")
	cmd := flag.String("cmd", "", "command (arguments to the entrypoint), words separated by spaces")
	user := flag.String("user", "", "user[:group] of the image config (empty: root)")
	flag.Var(&files, "file", "IMAGEPATH=HOSTPATH[:MODE] (repeatable; mode in octal, default 0755)")
	flag.Var(&dirs, "dir", "IMAGEPATH[:MODE] an empty directory (repeatable)")
	flag.Var(&links, "symlink", "IMAGEPATH=TARGET (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE (repeatable)")
	flag.Var(&expose, "expose", "PORT/PROTO (repeatable)")
	flag.Parse()
	if *out == "" || *name == "" {
		log.Fatal("usage: ociimage -o OUT -name REF [-entrypoint ...] [-file PATH=HOST[:MODE]]...")
	}

	entries := map[string]entry{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = entry{name: d, mode: 0o755, dir: true}
			}
		}
	}
	parseMode := func(s string, def int64) int64 {
		if s == "" {
			return def
		}
		m, err := strconv.ParseInt(s, 8, 64)
		if err != nil {
			log.Fatalf("bad mode %q: %v", s, err)
		}
		return m
	}
	for _, f := range files {
		dst, src, ok := strings.Cut(f, "=")
		if !ok {
			log.Fatalf("bad -file %q", f)
		}
		src, mode, _ := strings.Cut(src, ":")
		data, err := os.ReadFile(src)
		if err != nil {
			log.Fatal(err)
		}
		addParents(dst)
		entries[dst] = entry{name: dst, mode: parseMode(mode, 0o755), data: data}
	}
	for _, d := range dirs {
		p, mode, _ := strings.Cut(d, ":")
		addParents(p)
		entries[p] = entry{name: p, mode: parseMode(mode, 0o755), dir: true}
	}
	for _, l := range links {
		p, target, ok := strings.Cut(l, "=")
		if !ok {
			log.Fatalf("bad -symlink %q", l)
		}
		addParents(p)
		entries[p] = entry{name: p, mode: 0o777, link: target}
	}

	// The layer: an uncompressed tar (its digest is the config's diff_id), then gzipped.
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	epoch := time.Unix(0, 0)
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	for _, n := range names {
		e := entries[n]
		h := &tar.Header{Name: strings.TrimPrefix(n, "/"), Mode: e.mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.dir:
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			log.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				log.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		log.Fatal(err)
	}
	var layerGz bytes.Buffer
	gz, _ := gzip.NewWriterLevel(&layerGz, gzip.BestSpeed)
	if _, err := io.Copy(gz, bytes.NewReader(layerTar.Bytes())); err != nil {
		log.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		log.Fatal(err)
	}

	cfg := map[string]any{"Env": append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, env...)}
	if *entrypoint != "" {
		cfg["Entrypoint"] = strings.Fields(*entrypoint)
	}
	if *cmd != "" {
		cfg["Cmd"] = strings.Fields(*cmd)
	}
	if *user != "" {
		cfg["User"] = *user
	}
	if len(expose) > 0 {
		ports := map[string]struct{}{}
		for _, p := range expose {
			ports[p] = struct{}{}
		}
		cfg["ExposedPorts"] = ports
	}
	config := mustJSON(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       cfg,
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layerTar.Bytes())}},
		"history":      []map[string]string{{"created_by": "resilient-operator e2e/tools/images/ociimage"}},
	})
	manifest := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descriptor{MediaType: "application/vnd.oci.image.config.v1+json", Digest: digest(config), Size: int64(len(config))},
		"layers": []descriptor{{
			MediaType: "application/vnd.oci.image.layer.v1.tar+gzip", Digest: digest(layerGz.Bytes()), Size: int64(layerGz.Len()),
		}},
	})
	tag := *name
	if i := strings.LastIndex(tag, ":"); i > strings.LastIndex(tag, "/") {
		tag = tag[i+1:]
	} else {
		tag = "latest"
	}
	index := mustJSON(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests": []descriptor{{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: digest(manifest), Size: int64(len(manifest)),
			Annotations: map[string]string{"io.containerd.image.name": *name, "org.opencontainers.image.ref.name": tag},
			Platform:    map[string]string{"architecture": "amd64", "os": "linux"},
		}},
	})

	f, err := os.Create(*out + ".partial")
	if err != nil {
		log.Fatal(err)
	}
	ow := tar.NewWriter(f)
	write := func(name string, data []byte) {
		h := &tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch, Typeflag: tar.TypeReg}
		if err := ow.WriteHeader(h); err != nil {
			log.Fatal(err)
		}
		if _, err := ow.Write(data); err != nil {
			log.Fatal(err)
		}
	}
	blob := func(b []byte) string { return "blobs/sha256/" + strings.TrimPrefix(digest(b), "sha256:") }
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := ow.WriteHeader(&tar.Header{Name: d, Mode: 0o755, ModTime: epoch, Typeflag: tar.TypeDir}); err != nil {
			log.Fatal(err)
		}
	}
	write("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	write(blob(layerGz.Bytes()), layerGz.Bytes())
	write(blob(config), config)
	write(blob(manifest), manifest)
	write("index.json", index)
	if err := ow.Close(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(*out+".partial", *out); err != nil {
		log.Fatal(err)
	}
	fmt.Fprintf(os.Stderr, "%s: %s (layer %d bytes)\n", *out, *name, layerGz.Len())
}
