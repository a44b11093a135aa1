import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.MongoDatabase;
import de.bwaldvogel.mongo.backend.CollectionOptions;
import de.bwaldvogel.mongo.backend.CursorRegistry;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.QueryResult;
import de.bwaldvogel.mongo.backend.h2.H2Backend;
import de.bwaldvogel.mongo.backend.h2.H2Collection;
import de.bwaldvogel.mongo.backend.h2.H2Database;
import de.bwaldvogel.mongo.backend.memory.MemoryBackend;
import de.bwaldvogel.mongo.backend.memory.MemoryCollection;
import de.bwaldvogel.mongo.backend.memory.MemoryDatabase;
import de.bwaldvogel.mongo.bson.Document;
import org.h2.mvstore.MVMap;
import org.h2.mvstore.MVStore;

import java.util.List;
import java.util.function.BiFunction;
import java.util.function.Supplier;

/**
 * Backends whose collections answer a filter from a unique index whenever the
 * filter pins every key of that index, not only when it holds nothing else,
 * and a sorted query from an ordered non-unique index (OrderedIndex.java).
 *
 * mongo-java-server uses an index only for a filter whose keys are exactly the
 * index's keys, so {@code {_id: x, state: "inflight"}} (a compare-and-set, a
 * counter update guarded by its applied marks) scans the whole collection:
 * 40 ms at 200,000 documents, 350 ms at 770,000. MongoDB uses the index and
 * then tests the remaining conditions; this does the same. It is safe because
 * the documents matching the whole filter are a subset of those the index
 * returns for its own keys, and the base class still tests every returned
 * document against the whole filter.
 *
 * The same backends keep their non-unique indexes in order, so that a sorted
 * query such as mopq's claim read is answered by walking one instead of scanning
 * and sorting the collection. Nothing else about the engine changes.
 */
final class IndexFirst {

    private IndexFirst() {
    }

    /**
     * A collection's query: from a unique index the filter pins, else from an ordered
     * index that gives the sort's order, else the engine's own way ({@code scan}: an
     * index whose keys are exactly the filter's, or a scan and a sort).
     * {@code matchAt} tests the documents at some positions against the whole filter
     * and applies the sort it is given (null: already in order), skip, limit and projection.
     */
    static <P> QueryResult query(MongoCollection<P> collection, Document filter, Document orderBy,
                                 BiFunction<Iterable<P>, Document, QueryResult> matchAt,
                                 Supplier<OrderedIndex.Source<P>> source, Supplier<QueryResult> scan) {
        List<Index<P>> indexes = collection.getIndexes();
        if (filter.size() >= 2) {
            for (Index<P> index : indexes) {
                Document pinned = new Document();
                for (IndexKey key : index.getKeys()) {
                    if (!filter.containsKey(key.getKey())) {
                        pinned = null;
                        break;
                    }
                    pinned.put(key.getKey(), filter.get(key.getKey()));
                }
                if (pinned != null && pinned.size() < filter.size() && index.canHandle(pinned)) {
                    return matchAt.apply(index.getPositions(pinned), orderBy);
                }
            }
        }
        if (orderBy != null && !orderBy.isEmpty() && indexes.stream().noneMatch(index -> index.canHandle(filter))) {
            // The walk happens under the collection's lock, which every write of it takes.
            synchronized (collection) {
                Iterable<P> sorted = OrderedIndex.answer(indexes, filter, orderBy, source);
                if (sorted != null) {
                    // Already in the sort's order: no sort, so the walk stops at the limit.
                    return matchAt.apply(sorted, null);
                }
            }
        }
        return scan.get();
    }

    /** Memory storage (tests, {@code mopq engine} without --data). */
    static final class Memory extends MemoryBackend {
        @Override
        public MemoryDatabase openOrCreateDatabase(String databaseName) {
            return new MemoryDatabase(databaseName, getCursorRegistry()) {
                @Override
                protected Index<Integer> openOrCreateSecondaryIndex(String collectionName, String indexName,
                                                                    List<IndexKey> keys, boolean sparse) {
                    return OrderedIndex.create(indexName, keys, sparse);
                }

                @Override
                protected MemoryCollection openOrCreateCollection(String collectionName, CollectionOptions options) {
                    return new MemoryCollection(this, collectionName, options, cursorRegistry) {
                        @Override
                        protected QueryResult queryDocuments(Document query, Document orderBy, int skip, int limit,
                                                             int batchSize, Document fields) {
                            return IndexFirst.query(this, query, orderBy, (positions, sort) ->
                                    matchDocuments(query, positions, sort, skip, limit, batchSize, fields),
                                    // Storage order of the memory backend: list slots, ascending.
                                    () -> new OrderedIndex.Source<>(getIdField(), Integer::compare,
                                            visit -> OrderedIndex.everySlot(this::getDocument, visit),
                                            this::getDocument, this::count),
                                    () -> super.queryDocuments(query, orderBy, skip, limit, batchSize, fields));
                        }
                    };
                }
            };
        }
    }

    /** H2 storage ({@code make run}, {@code mopq engine --data}); Durable adds commits before answers. */
    static class H2 extends H2Backend {
        /** Map names as H2Database spells them (package-private there); files written by either stay readable. */
        private static final String DATA_PREFIX = "databases.";
        private static final String META_PREFIX = "meta.";

        H2(MVStore store) {
            super(store);
        }

        @Override
        protected MongoDatabase openOrCreateDatabase(String databaseName) {
            MVStore store = getMvStore();
            CursorRegistry cursors = getCursorRegistry();
            return new H2Database(databaseName, store, cursors) {
                @Override
                protected Index<Object> openOrCreateSecondaryIndex(String collectionName, String indexName,
                                                                   List<IndexKey> keys, boolean sparse) {
                    return OrderedIndex.create(indexName, keys, sparse);
                }

                @Override
                protected MongoCollection<Object> openOrCreateCollection(String collectionName,
                                                                         CollectionOptions options) {
                    String namespace = getFullCollectionNamespace(collectionName);
                    MVMap<Object, Document> data = store.openMap(DATA_PREFIX + namespace);
                    MVMap<String, Object> meta = store.openMap(META_PREFIX + namespace);
                    return new H2Collection(this, collectionName, options, data, meta, cursors) {
                        @Override
                        protected QueryResult queryDocuments(Document query, Document orderBy, int skip, int limit,
                                                             int batchSize, Document fields) {
                            return IndexFirst.query(this, query, orderBy, (positions, sort) ->
                                    matchDocuments(query, positions, sort, skip, limit, batchSize, fields),
                                    // Storage order of the H2 backend: its data map's key order (the _id).
                                    () -> new OrderedIndex.Source<>(getIdField(), data.getKeyType()::compare,
                                            visit -> streamAllDocumentsWithPosition().forEach(stored ->
                                                    visit.accept(stored.getDocument(), stored.getPosition())),
                                            this::getDocument, this::count),
                                    () -> super.queryDocuments(query, orderBy, skip, limit, batchSize, fields));
                        }
                    };
                }
            };
        }
    }
}
