// kstatus prints how sigs.k8s.io/cli-utils' kstatus (the library Flux uses to decide whether a
// resource is Current, InProgress or Failed) reads each Kubernetes object given on standard
// input as a stream of JSON documents: one JSON line per object with name, status and message.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	dec := json.NewDecoder(os.Stdin)
	enc := json.NewEncoder(os.Stdout)
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			return
		} else if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: reading input:", err)
			os.Exit(2)
		}
		// Kubernetes' JSON decoding keeps whole numbers int64, as unstructured objects need.
		var obj map[string]interface{}
		if err := utiljson.Unmarshal(raw, &obj); err != nil {
			fmt.Fprintln(os.Stderr, "kstatus: decoding object:", err)
			os.Exit(2)
		}
		u := &unstructured.Unstructured{Object: obj}
		res, err := status.Compute(u)
		if err != nil {
			fmt.Fprintln(os.Stderr, "kstatus:", u.GetName(), err)
			os.Exit(1)
		}
		if err := enc.Encode(result{Name: u.GetName(), Status: string(res.Status), Message: res.Message}); err != nil {
			os.Exit(2)
		}
	}
}
