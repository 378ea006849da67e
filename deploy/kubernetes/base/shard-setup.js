// livecomments: shard the comments collection and create every index the
// application expects. Run once, against a mongos, as a user with the root role
// (or clusterAdmin + dbAdmin on livecomments):
//
//   mongosh "mongodb://admin@mongos1.internal:27017/admin" --file deploy/mongo/shard-setup.js
//
// Every step is idempotent, and the script works whether or not a comment
// service already created the collection. The index specs are exactly those of
// livecomments/kernel/store.py (Store.ensure_indexes), which every comment-service
// process runs at start-up: identical specs make that call a no-op, a different
// spec under the same name would make it fail (IndexKeySpecsConflict /
// IndexOptionsConflict) and the service would refuse to start.
//
// ---------------------------------------------------------------------------
// Shard key: {video_id: 1, seq: 1}, ranged. Not {video_id: 1, _id: 1}.
//
// The original design (docs/architecture.md, "Departures from the original
// design, and why") asked for two things that cannot both hold on a sharded
// collection: the shard key {video_id: 1, _id: 1} and a unique index
// {video_id: 1, seq: -1}.
// Each shard enforces a unique index only over the documents it holds, so
// MongoDB accepts a unique index on a sharded collection only if the shard key
// fields are a prefix of it (the _id index aside). It checks field names, in
// order: {video_id, seq} does not start with {video_id, _id}, so createIndexes
// fails on a collection sharded by {video_id, _id}, and shardCollection refuses
// to shard a collection that already has that unique index. Dropping the
// uniqueness is not an option: it is the last line of defence against a seq
// handed out twice after the Redis counter was lost or fell behind
// (livecomments/kernel/sequencer.py).
//
// With the shard key {video_id: 1, seq: 1}:
//  - {video_id: 1, seq: -1} unique is legal: the shard key's fields lead it
//    (direction is not part of that rule). Every document with a given
//    (video_id, seq) lies in the one chunk owning that shard-key value, so the
//    shard's local unique index enforces uniqueness for the whole cluster.
//  - Every query names video_id, so every query is targeted: history pages
//    are {video_id, seq: {$gte, $lte}} ranges, contiguous in the shard key,
//    usually one chunk on one shard.
//  - A viral video still splits: its chunks divide on seq, so no chunk grows
//    into an unsplittable jumbo chunk (the original design's reason for a compound key).
//  - Ranged, not hashed: hashed shard keys cannot be declared unique, and
//    MongoDB documents unique enforcement for ranged keys. Ranged also keeps a
//    video's history in seq order inside its chunks.
// Costs: the shard key needs its own ascending index {video_id: 1, seq: 1}
// (shard key fields must be ascending or hashed, and an index supports a shard
// key only if its directions match), so (video_id, seq) is indexed twice.
// _id is unique only per shard; Snowflake ids are unique by construction (one
// ZooKeeper-leased worker id per comment-service process). A lookup by _id
// alone is broadcast to every shard: queries and updates should name video_id.
// Ranged on video_id puts neighbouring ids in one chunk; if video ids were
// sequential (time-ordered), new videos would all land on the last chunk: pre-
// split, or revisit the key. Random-looking ids spread on their own.
// ---------------------------------------------------------------------------

const DB_NAME = "livecomments";
const NS = DB_NAME + ".comments";
const SHARD_KEY = { video_id: 1, seq: 1 };

const lc = db.getSiblingDB(DB_NAME);
const comments = lc.getCollection("comments");

sh.enableSharding(DB_NAME); // optional since MongoDB 6.0, harmless, and picks the primary shard

// The index supporting the shard key. shardCollection would create it on an
// empty collection; creating it first also covers a collection that already
// holds data.
comments.createIndex(SHARD_KEY);

// config.collections lists sharded collections (and, since 8.0, unsharded ones
// that were moved: those carry unsplittable: true).
const entry = db.getSiblingDB("config").collections.findOne({ _id: NS });
const sharded = entry !== null && !entry.unsplittable && !entry.dropped ? entry : null;
if (sharded === null) {
  sh.shardCollection(NS, SHARD_KEY);
  print("sharded " + NS + " on " + JSON.stringify(SHARD_KEY));
} else if (JSON.stringify(sharded.key) !== JSON.stringify(SHARD_KEY)) {
  throw new Error(NS + " is already sharded on " + JSON.stringify(sharded.key)
    + ", not " + JSON.stringify(SHARD_KEY) + ": reshard it (sh.reshardCollection) first");
} else {
  print(NS + " is already sharded on " + JSON.stringify(SHARD_KEY));
}

// The application's indexes (livecomments/kernel/store.py), spec for spec.
comments.createIndex({ video_id: 1, seq: -1 }, { unique: true });
comments.createIndex(
  { video_id: 1, parent_id: 1, seq: 1 },
  // Only replies carry an int64 parent_id; top-level comments have null.
  { name: "replies", partialFilterExpression: { parent_id: { $type: "long" } } }
);
// Indexes of earlier versions that no query needs (each cost every insert an
// entry); the comment service drops them too when it starts.
for (const name of ["video_id_1__id_-1", "user_id_1__id_-1", "parent_id_1__id_-1"]) {
  if (comments.getIndexes().some((ix) => ix.name === name)) comments.dropIndex(name);
}

// users stays unsharded (small, looked up by username_key), on the primary shard.
lc.getCollection("users").createIndex({ username_key: 1 }, { unique: true });

printjson(comments.getIndexes().map((ix) => ix.name));
printjson(lc.getCollection("users").getIndexes().map((ix) => ix.name));
