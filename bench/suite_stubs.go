package main

func suitePostcopy(b *bencher) {}
