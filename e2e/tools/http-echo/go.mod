module local/http-echo-bin

go 1.26

tool github.com/hashicorp/http-echo

require github.com/hashicorp/http-echo v1.0.0 // indirect
