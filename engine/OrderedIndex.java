import de.bwaldvogel.mongo.MongoCollection;
import de.bwaldvogel.mongo.backend.EmptyIndex;
import de.bwaldvogel.mongo.backend.Index;
import de.bwaldvogel.mongo.backend.IndexKey;
import de.bwaldvogel.mongo.backend.KeyValue;
import de.bwaldvogel.mongo.backend.Missing;
import de.bwaldvogel.mongo.backend.ValueComparator;
import de.bwaldvogel.mongo.bson.Document;
import de.bwaldvogel.mongo.bson.ObjectId;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.Comparator;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.NavigableSet;
import java.util.NoSuchElementException;
import java.util.PriorityQueue;
import java.util.TreeSet;
import java.util.function.BiConsumer;
import java.util.function.Consumer;
import java.util.function.Function;
import java.util.function.IntSupplier;
import java.util.function.Supplier;

/**
 * A non-unique secondary index kept in memory, in the order a sort on its keys gives,
 * so that a sorted query on the index is answered by walking it (issue 16).
 *
 * Alone, mongo-java-server accepts a non-unique index and keeps nothing in it
 * (EmptyIndex): every query that no unique index answers scans the collection and
 * then sorts what matched. mopq's claim reads the best candidates of one queue,
 * {@code find({queue, state: {$in: [pending, inflight]}, visible_at: {$lte: now}})
 * .sort({priority: -1, _id: 1}).limit(N)}, which cost 170 ms at 100,000 waiting.
 * MongoDB answers it from the "claim" index (queue, state, priority desc, _id) and
 * reads about N documents; with this index the engine does the same.
 *
 * <h2>Which queries</h2>
 * One whose sort is exactly the index's last keys, in order and direction, and
 * whose filter pins every key before them by equality at its top level: a string,
 * an ObjectId or an integer, {@code {$eq: v}}, or {@code {$in: [v, ...]}} (at most
 * {@value #MAX_RANGES} combinations), and that no index of the engine's own answers
 * (IndexFirst). The positions of the documents whose pinned keys equal those values
 * are handed out in sort order, lazily, and the engine's own code tests each against
 * the whole filter and applies skip, limit, projection and batch size, so the work is
 * what is returned plus what the rest of the filter rejects on the way (for the
 * claim: messages of the queue not visible yet, which MongoDB's walk of the claim
 * index reads too). Anything else goes the engine's normal way (scan, then sort).
 *
 * <h2>Why the results are those of the plain engine</h2>
 * The plain engine sorts the matching documents with a stable sort, in storage
 * order, by {@code ValueComparator} on the values {@code Utils.getSubdocumentValueCollectionAware}
 * reads. This index orders its entries by the same comparator on the same values,
 * key by key in the index's directions, and breaks ties by storage order (the
 * position: list slot for memory, the H2 data map's key order for H2), so for any
 * two documents both orders agree. The entries of one pinned range are exactly the
 * documents whose pinned keys compare equal to the pinned values, a superset of
 * those the filter's equalities match (a string or ObjectId equals only itself,
 * an integer every number of the same value), and the engine still tests the
 * whole filter. That holds only while every indexed value is of a type whose
 * comparison is a total order and whose equality is not looser than the
 * comparator's: so a document whose indexed fields hold anything but a missing
 * field, null, a string, an ObjectId, a boolean, a date, or a number in the ranges
 * {@link #orderable} allows (an array, a subdocument, a Decimal128, ...) is kept
 * aside, and while the collection holds one, this index answers nothing.
 *
 * <h2>Keeping it current</h2>
 * The index is built from the collection's documents by the first query it could
 * answer (after createIndexes, and after an H2 database is opened), under the
 * collection's lock; until then it costs nothing. After that, the engine calls
 * {@code add}, {@code remove} and {@code updateInPlace} of every index for every
 * insert (upserts included), delete and update (update, replace, findAndModify) that
 * changes a document, under the collection's lock (every collection operation of
 * mongo-java-server is synchronized). Those calls come before the engine changes
 * the stored document, and a write can still fail after them, so they only note
 * which documents were touched and where; the next query this index answers (again
 * under the collection's lock) first reads each touched document back from the
 * collection as it is stored then and moves, adds or drops its entry accordingly,
 * and checks that the index holds as many documents as the collection. So what a
 * query walks is the stored data as of that query, whichever step of a write failed.
 * If a check fails, the index is built again from the data. Toward the engine the
 * index behaves exactly like EmptyIndex: it never answers {@code canHandle},
 * {@code getPosition} or {@code remove} with anything, reports zero keys, and
 * declares itself sparse as EmptyIndex does.
 */
final class OrderedIndex<P> extends Index<P> {

    /**
     * {@code MOPQ_ENGINE_PLAIN_INDEXES=1} in the engine's environment keeps the
     * engine's own EmptyIndex for every non-unique index: the plain engine that
     * tests/test_engine_index.py and bench/bench_claims.py compare this one with.
     */
    static final String PLAIN = "MOPQ_ENGINE_PLAIN_INDEXES";
    static final boolean ENABLED = !"1".equals(System.getenv(PLAIN));

    /** Most combinations of pinned values (e.g. 2 queues x 3 states = 6) walked at once. */
    static final int MAX_RANGES = 64;

    /** Touched documents noted before the index forgets everything and builds again instead. */
    private static final int MIN_TOUCHED_LIMIT = 10_000;

    private static final double INT_RANGE = 0x1p31;
    private static final double EXACT_DOUBLE = 0x1p53;

    /** Bound markers: before and after every value of a key, and every position. */
    private static final Object LOW = new Object();
    private static final Object HIGH = new Object();

    private final String[] fields;
    private final ValueComparator[] comparators;

    /** How to read the collection, given by the first query that could use the index. */
    private Source<P> owner;

    /** The entries of the documents that have one, in sort order then storage order. */
    private TreeSet<Entry<P>> entries;
    /** Every document by its _id (idOf): its entry, or one without values if it is set aside. */
    private final Map<Object, Entry<P>> byId = new HashMap<>();
    /** Documents written since the last query, by _id (idOf): where they are, null once removed. */
    private final Map<Object, P> touched = new HashMap<>();
    private int setAside;
    private boolean built;
    /** A build found the data inconsistent (two documents with one _id): never answer. */
    private boolean failed;
    private boolean dropped;

    private OrderedIndex(String name, List<IndexKey> keys) {
        // Sparse, as EmptyIndex declares itself: the engine then tolerates that remove()
        // finds no position here, exactly as it does for the index this one replaces.
        super(name, keys, true);
        fields = new String[keys.size()];
        comparators = new ValueComparator[keys.size()];
        for (int i = 0; i < fields.length; i++) {
            fields[i] = keys.get(i).getKey();
            comparators[i] = keys.get(i).isAscending() ? ValueComparator.asc() : ValueComparator.desc();
        }
    }

    /**
     * The index for a non-unique secondary index: this one for a plain index of
     * top-level fields, the engine's EmptyIndex for a sparse one, one on a dotted
     * path (left as the engine has them), or any with {@value #PLAIN}=1.
     */
    static <P> Index<P> create(String name, List<IndexKey> keys, boolean sparse) {
        boolean ordered = ENABLED && !sparse && !keys.isEmpty() && keys.stream()
                .map(IndexKey::getKey)
                .noneMatch(key -> key.isEmpty() || key.contains(".") || key.startsWith("$"));
        return ordered ? new OrderedIndex<>(name, keys) : new EmptyIndex<>(name, keys);
    }

    /**
     * What the index needs from its collection: the _id field, storage order of
     * positions, a walk over every document with its position, the document stored
     * at a position (null if none), and how many documents there are.
     */
    record Source<P>(String idField, Comparator<? super P> storageOrder,
                     Consumer<BiConsumer<Document, P>> everyDocument,
                     Function<P, Document> document, IntSupplier count) {
    }

    /** One document's position and indexed values (null: set aside, not in the walk). */
    private record Entry<P>(Object[] values, P position) {
    }

    /**
     * Every document of a memory collection with its slot, from its slot lookup
     * (empty slots hold null; past the end it throws).
     */
    static void everySlot(Function<Integer, Document> slot, BiConsumer<Document, Integer> visit) {
        for (int position = 0; ; position++) {
            Document document;
            try {
                document = slot.apply(position);
            } catch (IndexOutOfBoundsException end) {
                return;
            }
            if (document != null) {
                visit.accept(document, position);
            }
        }
    }

    // -- the collection's side ------------------------------------------------------------

    /** The positions for a sorted query from the first ordered index that can answer it, or null. */
    static <P> Iterable<P> answer(List<Index<P>> indexes, Document query, Document orderBy,
                                  Supplier<Source<P>> collection) {
        if (orderBy == null || orderBy.isEmpty() || query == null) {
            return null;
        }
        for (Index<P> index : indexes) {
            if (index instanceof OrderedIndex<P> ordered) {
                Iterable<P> positions = ordered.positions(query, orderBy, collection);
                if (positions != null) {
                    return positions;
                }
            }
        }
        return null;
    }

    /**
     * The positions of the documents a query may return, in the order of its sort,
     * or null if this index cannot answer it. Called with the collection's lock held,
     * which the caller keeps until it has walked them.
     */
    synchronized Iterable<P> positions(Document query, Document orderBy, Supplier<Source<P>> collection) {
        if (dropped) {
            return null;
        }
        int pinned = fields.length - orderBy.size();
        if (pinned < 0) {
            return null;
        }
        int i = pinned;
        for (Map.Entry<String, Object> sort : orderBy.entrySet()) {
            if (!sort.getKey().equals(fields[i])
                    || !(sort.getValue() instanceof Number direction)
                    // DocumentComparator's reading of a sort value.
                    || (direction.intValue() > 0) != (comparators[i] == ValueComparator.asc())) {
                return null;
            }
            i++;
        }
        List<List<Object>> choices = new ArrayList<>();
        long ranges = 1;
        for (int k = 0; k < pinned; k++) {
            if (!query.containsKey(fields[k])) {
                return null;
            }
            List<Object> values = equalTo(query.get(fields[k]));
            if (values == null) {
                return null;
            }
            ranges *= values.size();
            if (ranges > MAX_RANGES) {
                return null;
            }
            choices.add(values);
        }
        if (owner == null) {
            owner = collection.get();
        }
        catchUp();
        if (!built || setAside > 0) {
            return null;
        }
        List<NavigableSet<Entry<P>>> walks = new ArrayList<>();
        for (List<Object> prefix : product(choices)) {
            Object[] low = new Object[fields.length];
            Object[] high = new Object[fields.length];
            for (int k = 0; k < fields.length; k++) {
                low[k] = k < pinned ? prefix.get(k) : LOW;
                high[k] = k < pinned ? prefix.get(k) : HIGH;
            }
            @SuppressWarnings("unchecked")
            P lowPosition = (P) LOW;
            @SuppressWarnings("unchecked")
            P highPosition = (P) HIGH;
            walks.add(entries.subSet(new Entry<>(low, lowPosition), true, new Entry<>(high, highPosition), true));
        }
        Comparator<Entry<P>> sortOrder = entryOrder(pinned);
        return () -> merged(walks, sortOrder);
    }

    // -- the engine's side (Index) ----------------------------------------------------------

    @Override
    public synchronized void add(Document document, P position, MongoCollection<P> collection) {
        touch(document, position);
    }

    @Override
    public synchronized P remove(Document document) {
        touch(document, null);
        return null;
    }

    @Override
    public synchronized void updateInPlace(Document oldDocument, Document newDocument, P position,
                                           MongoCollection<P> collection) {
        // The _id cannot change (the engine refuses that before any index hears of it).
        touch(newDocument, position);
    }

    @Override
    public P getPosition(Document document) {
        return null;
    }

    @Override
    public void checkAdd(Document document, MongoCollection<P> collection) {
    }

    @Override
    public void checkUpdate(Document oldDocument, Document newDocument, MongoCollection<P> collection) {
    }

    @Override
    public boolean canHandle(Document query) {
        return false;
    }

    @Override
    public Iterable<P> getPositions(Document query) {
        throw new UnsupportedOperationException();
    }

    /** Zero, as EmptyIndex reports (collStats, validate). */
    @Override
    public long getCount() {
        return 0;
    }

    /** Not empty, so that the engine's own (unlocked) build skips it: the first query builds it. */
    @Override
    public boolean isEmpty() {
        return false;
    }

    @Override
    public long getDataSize() {
        return 0;
    }

    @Override
    public synchronized void drop() {
        invalidate();
        owner = null;
        dropped = true;
    }

    // -- inside -----------------------------------------------------------------------------

    private void invalidate() {
        built = false;
        entries = null;
        byId.clear();
        touched.clear();
        setAside = 0;
    }

    private void touch(Document document, P position) {
        if (!built) {
            return;
        }
        touched.put(idOf(document), position);
        if (touched.size() > Math.max(MIN_TOUCHED_LIMIT, byId.size())) {
            // Building again at the next query costs about what catching up would.
            invalidate();
        }
    }

    /** Brings the index up to the stored data: builds it, or reads back what was touched. */
    private void catchUp() {
        if (!built) {
            if (!failed) {
                build();
            }
            return;
        }
        for (Map.Entry<Object, P> written : touched.entrySet()) {
            if (!reread(written.getKey(), written.getValue())) {
                rebuild("a touched document's entry was not where it should be");
                return;
            }
        }
        touched.clear();
        if (byId.size() != owner.count().getAsInt()) {
            rebuild("it holds " + byId.size() + " documents, the collection " + owner.count().getAsInt());
        }
    }

    /**
     * The entry of one touched document made what the stored data says: the document
     * now at its last known position if it has this _id, none otherwise.
     */
    private boolean reread(Object id, P position) {
        Document stored = position == null || position instanceof Missing ? null : owner.document().apply(position);
        Entry<P> now = stored != null && id.equals(idOf(stored)) ? entryOf(stored, position) : null;
        Entry<P> before = byId.get(id);
        if (before != null && now != null && before.position().equals(position)
                && Arrays.equals(before.values(), now.values())) {
            return true;
        }
        if (before != null) {
            byId.remove(id);
            if (before.values() == null) {
                setAside--;
            } else if (!entries.remove(before)) {
                return false;
            }
        }
        return now == null || put(id, now);
    }

    private void rebuild(String why) {
        System.err.println("mopq engine: index " + getName() + " built again: " + why);
        build();
    }

    private void build() {
        invalidate();
        if (owner == null || owner.idField() == null) {
            return;
        }
        entries = new TreeSet<>(entryOrder(0));
        boolean[] consistent = {true};
        owner.everyDocument().accept((document, position) ->
                consistent[0] &= put(idOf(document), entryOf(document, position)));
        if (consistent[0]) {
            built = true;
        } else {
            invalidate();
            failed = true;
            System.err.println("mopq engine: index " + getName() + " could not be built (two documents "
                    + "with one _id or at one position); queries on it scan the collection");
        }
    }

    private boolean put(Object id, Entry<P> entry) {
        if (byId.putIfAbsent(id, entry) != null) {
            return false;
        }
        if (entry.values() == null) {
            setAside++;
            return true;
        }
        return entries.add(entry);
    }

    /**
     * The document's _id as a key of byId: the _id index's normalized key (1 and 1.0
     * are one _id, and so are null and missing), or the _id itself when it is a string
     * or an ObjectId (nothing else equals those).
     */
    private Object idOf(Document document) {
        Object id = document.get(owner.idField());
        if (id instanceof ObjectId || id instanceof String) {
            return id;
        }
        return new KeyValue(Collections.singletonList(Missing.isNullOrMissing(id) ? null : id)).normalized();
    }

    /**
     * The document's entry, without values (set aside) if a value is not one this
     * index can order, or it has no position (no _id: H2 then keys it by Missing).
     */
    private Entry<P> entryOf(Document document, P position) {
        if (position == null || position instanceof Missing) {
            return new Entry<>(null, position);
        }
        Object[] values = new Object[fields.length];
        for (int i = 0; i < fields.length; i++) {
            // What Utils.getSubdocumentValueCollectionAware, which the engine's sort reads
            // values with, returns for a top-level field of a document, without its regex split.
            Object value = document.getOrMissing(fields[i]);
            if (!orderable(value)) {
                return new Entry<>(null, position);
            }
            values[i] = value;
        }
        return new Entry<>(values, position);
    }

    /**
     * Values on which ValueComparator is a total order consistent with the filter's
     * equality: numbers compare by value only while none is a long beyond 2^53 or a
     * fraction beyond 2^31 (a long is compared with a double's integer part).
     */
    static boolean orderable(Object value) {
        if (value == null || value instanceof Missing || value instanceof String || value instanceof ObjectId
                || value instanceof Boolean || value instanceof Instant || value instanceof Integer) {
            return true;
        }
        if (value instanceof Long number) {
            return Math.abs((double) number) <= EXACT_DOUBLE;
        }
        if (value instanceof Double number) {
            double x = number;
            return Math.abs(x) < INT_RANGE || (x == Math.rint(x) && Math.abs(x) <= EXACT_DOUBLE);
        }
        return false;
    }

    /** A filter value that pins a key to one value or a few, or null. */
    private static List<Object> equalTo(Object condition) {
        if (pinnable(condition)) {
            return List.of(condition);
        }
        if (condition instanceof Document operator && operator.size() == 1) {
            if (operator.containsKey("$eq") && pinnable(operator.get("$eq"))) {
                return List.of(operator.get("$eq"));
            }
            if (operator.get("$in") instanceof List<?> values && !values.isEmpty()) {
                // Values that compare equal share one range: walking it twice would repeat documents.
                TreeSet<Object> distinct = new TreeSet<>(ValueComparator.asc());
                for (Object value : values) {
                    if (!pinnable(value)) {
                        return null;
                    }
                    distinct.add(value);
                }
                return new ArrayList<>(distinct);
            }
        }
        return null;
    }

    private static boolean pinnable(Object value) {
        return value instanceof String || value instanceof ObjectId || value instanceof Integer
                || (value instanceof Long number && Math.abs((double) number) <= EXACT_DOUBLE);
    }

    private static List<List<Object>> product(List<List<Object>> choices) {
        List<List<Object>> result = new ArrayList<>();
        result.add(new ArrayList<>());
        for (List<Object> values : choices) {
            List<List<Object>> next = new ArrayList<>();
            for (List<Object> prefix : result) {
                for (Object value : values) {
                    List<Object> longer = new ArrayList<>(prefix);
                    longer.add(value);
                    next.add(longer);
                }
            }
            result = next;
        }
        return result;
    }

    /** Entries by their values from key {@code from} on, in the index's directions, then storage order. */
    private Comparator<Entry<P>> entryOrder(int from) {
        Comparator<? super P> storage = owner.storageOrder();
        return (a, b) -> {
            for (int i = from; i < fields.length; i++) {
                int c = compare(comparators[i], a.values()[i], b.values()[i]);
                if (c != 0) {
                    return c;
                }
            }
            P x = a.position();
            P y = b.position();
            int bound = bounds(x, y);
            return bound != 0 || x == y ? bound : storage.compare(x, y);
        };
    }

    /** -1 or 1 if one of two different things is a bound marker (LOW first, HIGH last), else 0. */
    private static int bounds(Object x, Object y) {
        if (x == y) {
            return 0;
        }
        if (x == LOW || y == HIGH) {
            return -1;
        }
        return x == HIGH || y == LOW ? 1 : 0;
    }

    /**
     * ValueComparator's order. Two values of one of the types mopq indexes are compared
     * here as ValueComparator compares them (strings by compareTo, ObjectIds by their
     * bytes, ints as doubles, i.e. by value, dates by instant), without its walk
     * through the type order, which made inserts into a 100,000-entry index twice as
     * dear; anything else goes to ValueComparator itself.
     */
    private static int compare(ValueComparator comparator, Object x, Object y) {
        int bound = bounds(x, y);
        if (bound != 0 || x == y) {
            return bound;
        }
        int ascending;
        if (x instanceof String a && y instanceof String b) {
            ascending = a.compareTo(b);
        } else if (x instanceof ObjectId a && y instanceof ObjectId b) {
            ascending = a.compareTo(b);
        } else if (x instanceof Integer a && y instanceof Integer b) {
            ascending = Integer.compare(a, b);
        } else if (x instanceof Instant a && y instanceof Instant b) {
            ascending = a.compareTo(b);
        } else {
            return comparator.compare(x, y);
        }
        return comparator == ValueComparator.asc() ? ascending : -ascending;
    }

    /** The positions of several walks, each already in sort order, merged in sort order. */
    private static <P> Iterator<P> merged(List<NavigableSet<Entry<P>>> walks, Comparator<Entry<P>> order) {
        if (walks.size() == 1) {
            Iterator<Entry<P>> only = walks.get(0).iterator();
            return new Iterator<>() {
                @Override
                public boolean hasNext() {
                    return only.hasNext();
                }

                @Override
                public P next() {
                    return only.next().position();
                }
            };
        }
        record Head<P>(Entry<P> entry, Iterator<Entry<P>> rest) {
        }
        PriorityQueue<Head<P>> heads = new PriorityQueue<>(walks.size(), (a, b) -> order.compare(a.entry(), b.entry()));
        for (NavigableSet<Entry<P>> walk : walks) {
            Iterator<Entry<P>> it = walk.iterator();
            if (it.hasNext()) {
                heads.add(new Head<>(it.next(), it));
            }
        }
        return new Iterator<>() {
            @Override
            public boolean hasNext() {
                return !heads.isEmpty();
            }

            @Override
            public P next() {
                Head<P> head = heads.poll();
                if (head == null) {
                    throw new NoSuchElementException();
                }
                if (head.rest().hasNext()) {
                    heads.add(new Head<>(head.rest().next(), head.rest()));
                }
                return head.entry().position();
            }
        };
    }
}
