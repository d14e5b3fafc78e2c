module local/images

go 1.26
