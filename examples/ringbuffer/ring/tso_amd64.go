package ring

// tsoStores says that this architecture keeps stores in order and never moves a store after a
// later one (x86-64's total store order): a plain store publishes everything written before
// it, as an atomic store does, only without the full fence. See Ring.cheapPublish.
const tsoStores = true
